"""Evaluation: metrics against hand computations, 10-crop, the report folder, the export
evaluated like the Keras file, bad usage."""

import csv
import io
import json
import math
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_keras import (
    build_alexnet,
    evaluation,
    evaluation_report,
    gradcam,
    input_pipeline,
    mean_layer,
    serving,
)
from alexnet_keras_cli import evaluate
from commands import run_main
from small_models import small_alexnet


def write_records(path, examples):
    """A TFRecord file of (256x256 RGB uint8 array, label) examples, JPEG-encoded as the
    converter stores them."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for pixels, label in examples:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[buffer.getvalue()])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return str(path)


# Ten examples over seven classes, with the probabilities a stand-in model gives each:
# (label, probabilities). Ties are broken by the lower class index.
CASES = [
    (0, [0.7, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02]),  # top-1 right
    (1, [0.6, 0.2, 0.05, 0.05, 0.05, 0.03, 0.02]),  # predicted 0; top-5 hit
    (5, [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]),  # predicted 0; class 5 ties 3-6 at the top-5
    (4, [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]),  # boundary: 2, 3, 4 are in, 5 and 6 out
    (2, [0.1, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1]),  # top-1 right
    (6, [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.7]),  # top-1 right
    (6, [0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]),  # predicted 0; class 6 is 7th: top-5 miss
    (3, [0.02, 0.02, 0.02, 0.02, 0.02, 0.9, 0.0]),  # predicted 5; class 3 is 5th: hit
    (0, [0.4, 0.4, 0.05, 0.05, 0.05, 0.03, 0.02]),  # tie at the top: 0 wins, right
    (1, [0.4, 0.4, 0.05, 0.05, 0.05, 0.03, 0.02]),  # tie at the top: 0 wins, wrong
]


def red_level(index):
    return 20 * index + 10


@pytest.fixture(scope="module")
def known_predictions(tmp_path_factory):
    """Records whose image i is a flat picture of red level 20 i + 10, and a stand-in model
    that reads i back from the pixels and answers CASES[i]'s probabilities."""
    folder = tmp_path_factory.mktemp("known")
    examples = []
    for index, (label, _) in enumerate(CASES):
        pixels = np.zeros((256, 256, 3), np.uint8)
        pixels[..., 0] = red_level(index)
        examples.append((pixels, label))
    pattern = write_records(folder / "validation-00000-of-00001.tfrecord", examples)
    table = tf.constant([probabilities for _, probabilities in CASES], tf.float32)

    def stand_in(images):
        red = tf.reduce_mean(images[..., 0], axis=[1, 2])
        index = tf.cast(tf.round((red - 10.0) / 20.0), tf.int32)
        return tf.gather(table, index)

    return stand_in, pattern


@pytest.mark.parametrize("ten_crops", [False, True])
def test_metrics_equal_a_hand_computation(known_predictions, ten_crops):
    stand_in, pattern = known_predictions
    # Batch 4 does not divide 10: the padding must not be counted.
    report = evaluation.evaluate(
        stand_in, 7, pattern, len(CASES), batch_size=4, ten_crops=ten_crops
    )
    assert report["examples"] == 10
    assert report["top1_error"] == pytest.approx(6 / 10)  # right: examples 0, 4, 5, 8
    assert report["top1_accuracy"] == pytest.approx(4 / 10)
    assert report["top5_error"] == pytest.approx(2 / 10)  # missed: examples 2 and 6
    assert report["top5_accuracy"] == pytest.approx(8 / 10)
    true_probabilities = [0.7, 0.2, 0.1, 0.1, 0.4, 0.7, 0.05, 0.02, 0.4, 0.4]
    assert report["loss"] == pytest.approx(-sum(map(math.log, true_probabilities)) / 10, rel=1e-6)
    assert report["confusion_matrix"] == [
        [2, 0, 0, 0, 0, 0, 0],
        [2, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],
        [1, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 1],
    ]
    assert report["most_confused"] == [
        {"true": 1, "predicted": 0, "count": 2},
        {"true": 3, "predicted": 5, "count": 1},
        {"true": 4, "predicted": 0, "count": 1},
        {"true": 5, "predicted": 0, "count": 1},
        {"true": 6, "predicted": 0, "count": 1},
    ]
    assert report["per_class_examples"] == [2, 2, 1, 1, 1, 1, 2]
    assert report["per_class_recall"] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5]
    assert report["per_class_top1_error"] == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5]
    assert report["per_class_precision"] == [pytest.approx(2 / 7), None, 1.0, None, None, 0.0, 1.0]
    assert report["images_per_second"] > 0


def test_ten_crop_averages_softmax_outputs_not_logits(tmp_path):
    """A bright spot seen only by the top-left crop and its mirror: those two crops say class
    0 with confidence, the other eight lean to class 1. Averaged softmax: class 1; averaged
    logits would say class 0."""
    pixels = np.zeros((256, 256, 3), np.uint8)
    pixels[:10, :10] = 255
    pattern = write_records(tmp_path / "validation-00000-of-00001.tfrecord", [(pixels, 1)])

    def logits(images):
        sees_the_spot = tf.reduce_mean(images, axis=[1, 2, 3]) > 0.25
        return tf.where(
            sees_the_spot[:, None], tf.constant([[8.0, 0.0, 0.0]]), tf.constant([[0.0, 1.0, 0.0]])
        )

    crops = input_pipeline.ten_crop(tf.io.encode_jpeg(pixels, quality=95))
    crop_logits = logits(crops).numpy()
    assert int(tf.reduce_sum(tf.cast(crop_logits[:, 0] == 8.0, tf.int32))) == 2
    assert np.argmax(crop_logits.mean(axis=0)) == 0  # the case discriminates
    report = evaluation.evaluate(
        lambda images: tf.nn.softmax(logits(images)), 3, pattern, 1, batch_size=1, ten_crops=True
    )
    assert report["confusion_matrix"][1] == [0, 1, 0]
    assert report["top1_error"] == 0.0


@pytest.fixture(scope="module")
def model_file(synthetic_records, tmp_path_factory):
    model = small_alexnet(4, seed=4)
    mean_layer(model).set_mean(input_pipeline.load_dataset_info(synthetic_records)["rgb_mean"])
    path = tmp_path_factory.mktemp("model") / "alexnet.keras"
    model.save(path)
    return path


def run_evaluate(python, repo_root, *arguments):
    return subprocess.run(
        [python, "evaluate.py", "--no_progress", *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_report_folder_has_the_files_and_consistent_counts(
    model_file, synthetic_records, tmp_path, python, repo_root
):
    output = tmp_path / "report"
    result = run_evaluate(
        python,
        repo_root,
        "--model",
        model_file,
        "--data_dir",
        synthetic_records,
        "--output_dir",
        output,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    info = input_pipeline.load_dataset_info(synthetic_records)
    class_counts = [info["class_counts"]["validation"][name] for name in info["class_names"]]
    assert [sum(row) for row in report["confusion_matrix"]] == class_counts
    assert report["examples"] == info["num_examples"]["validation"]
    assert report["model"] == {
        "path": str(model_file),
        "kind": "keras",
        "parameters": keras.models.load_model(model_file).count_params(),
    }
    assert report["data"]["num_examples"] == info["num_examples"]
    assert report["class_names"] == info["class_names"]
    with open(output / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == info["class_names"]
    assert [int(row["examples"]) for row in rows] == class_counts
    for name in ("confusion_matrix.png", "most_confused.png"):
        with Image.open(output / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 150, name
    # The printed summary: the errors, then the worst classes.
    (top1_line,) = [line for line in result.stdout.splitlines() if line.startswith("  top-1 ")]
    assert top1_line.split()[1:] == [
        f"{report['top1_error']:.4f}",
        f"{report['top1_accuracy']:.4f}",
    ]
    assert "worst classes" in result.stdout
    # --report still writes the JSON alone.
    alone = tmp_path / "alone.json"
    result = run_main(
        evaluate.main,
        "--no_progress",
        "--model",
        model_file,
        "--data_dir",
        synthetic_records,
        "--report",
        alone,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(alone.read_text())["top1_error"] == report["top1_error"]


def test_the_heatmap_of_many_classes_shows_the_most_confused(tmp_path):
    classes = 150
    confusion = np.diag(np.full(classes, 10))
    confused = [(3, 140), (77, 12), (149, 0)]
    for true, predicted in confused:
        confusion[true, predicted] = 5
    shown = evaluation_report.heatmap_classes(confusion)
    assert len(shown) == evaluation_report.HEATMAP_SUBSET
    assert {3, 140, 77, 12, 149, 0} <= set(shown)
    sums = evaluation.EvaluationSums(classes)
    sums.confusion = confusion
    report = {
        **sums.metrics(),
        "class_names": [f"class_{index}" for index in range(classes)],
        "data": {"split": "validation"},
        "crop": "central crop",
    }
    evaluation_report.plot_confusion_matrix(report, tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600


def test_the_export_scores_what_the_keras_file_scores(model_file, synthetic_records, tmp_path):
    """A model evaluated through its run folder's .keras file and through its exported
    SavedModel's predict_pixels signature, on the same crops. (An untrained network whose
    predictions vary between images: a few epochs of training on the small test set collapse
    to one class, which would make equal numbers say nothing.)"""
    run = tmp_path / "run"
    run.mkdir()
    (run / "alexnet.keras").write_bytes(model_file.read_bytes())
    info = input_pipeline.load_dataset_info(synthetic_records)
    export = serving.export_model(
        keras.models.load_model(model_file),
        tmp_path / "exports",
        info["class_names"],
        log=lambda message: None,
    )
    # Report folders: beside the .keras file, and outside the folder TF Serving watches.
    assert (
        evaluation.default_output_dir(run, "validation", True)
        == run / "evaluation_validation_10crop"
    )
    assert evaluation.default_output_dir(tmp_path / "exports", "train", False) == (
        tmp_path / "exports_v1_evaluation_train"
    )
    for ten_crops in (False, True):
        from_keras = evaluation.evaluate_model(run, synthetic_records, ten_crops=ten_crops)
        from_export = evaluation.evaluate_model(export, synthetic_records, ten_crops=ten_crops)
        assert from_keras["model"]["kind"] == "keras"
        assert from_export["model"]["kind"] == "saved_model"
        assert from_export["model"]["parameters"] == from_keras["model"]["parameters"] - 3
        assert from_export["top1_error"] == from_keras["top1_error"]
        assert from_export["top5_error"] == from_keras["top5_error"]
        assert from_export["confusion_matrix"] == from_keras["confusion_matrix"]
        assert from_export["loss"] == pytest.approx(from_keras["loss"], rel=1e-4)
        predicted_classes = np.count_nonzero(np.sum(from_keras["confusion_matrix"], axis=0))
        assert predicted_classes >= 2, from_keras["confusion_matrix"]


def test_bad_usage_gets_a_message_and_no_traceback(
    model_file, synthetic_records, tmp_path, python, repo_root
):
    """The command in this process; the first case also as the script's own process."""
    five_classes = tmp_path / "five.keras"
    build_alexnet(num_classes=5, width_multiplier=0.125).save(five_classes)
    cases = [
        (["--model", tmp_path / "none.keras"], "does not exist"),
        (["--model", five_classes], "predicts 5 classes but"),
        (["--model", model_file, "--split", "test"], "has no 'test' split"),
        (["--model", tmp_path], "holds neither alexnet.keras"),
        (["--model", model_file, "--data_dir", tmp_path / "nowhere"], "nowhere does not exist"),
    ]
    for index, (arguments, message) in enumerate(cases):
        if "--data_dir" not in arguments:
            arguments = [*arguments, "--data_dir", synthetic_records]
        results = [run_main(evaluate.main, "--no_progress", *arguments)]
        if index == 0:
            results.append(run_evaluate(python, repo_root, *arguments))
        for result in results:
            assert result.returncode == 2, (arguments, result.stderr[-2000:])
            assert message in result.stderr, (message, result.stderr[-2000:])
            assert "Traceback" not in result.stderr


def test_the_report_folder_shows_the_most_confused_images_with_their_heatmaps(
    model_file, synthetic_records, tmp_path
):
    """The pairs' images found again by position are of the true class and answered with the
    predicted one; each panel of most_confused_images.png is that image's Grad-CAM overlay.
    An export gets no such file (no gradients)."""
    report = evaluation.evaluate_model(model_file, synthetic_records)
    output = evaluation_report.write_report_folder(report, tmp_path / "report")
    assert evaluation_report.report_files(report) == (
        *evaluation_report.REPORT_FILES,
        evaluation_report.CONFUSED_IMAGES_FILE,
    )
    assert sorted(path.name for path in output.iterdir()) == sorted(
        evaluation_report.report_files(report)
    )

    # Every image of the split, in reading order, and the model's answers.
    pattern = str(synthetic_records / "validation-*.tfrecord")
    images, labels = zip(
        *(
            (images.numpy(), labels.numpy())
            for images, labels in input_pipeline.make_eval_dataset(pattern, 16)
        )
    )
    images, labels = np.concatenate(images), np.concatenate(labels)
    model = keras.models.load_model(model_file)
    answered = np.argmax(model.predict(images, verbose=0), axis=1)
    pairs = report["most_confused_examples"]
    assert 2 <= len(pairs) <= evaluation.CONFUSED_IMAGE_PAIRS, report["confusion_matrix"]
    assert [{key: pair[key] for key in ("true", "predicted", "count")} for pair in pairs] == (
        report["most_confused"][: len(pairs)]
    )
    for pair in pairs:
        confused = np.flatnonzero((labels == pair["true"]) & (answered == pair["predicted"]))
        assert len(confused) == pair["count"]
        assert pair["positions"] == confused[: evaluation.IMAGES_PER_PAIR].tolist()

    with Image.open(output / evaluation_report.CONFUSED_IMAGES_FILE) as sheet:
        assert sheet.format == "PNG"
        pixels = np.asarray(sheet.convert("RGB"))
    columns = max(len(pair["positions"]) for pair in pairs)
    assert pixels.shape[1] == evaluation_report.panel_origin(0, columns)[0]
    assert pixels.shape[0] == (
        evaluation_report.panel_origin(len(pairs), 0)[1] - evaluation_report.ROW_TITLE_HEIGHT
    )
    explainer = gradcam.GradCam(model)
    names = report["class_names"]
    size = input_pipeline.CROP_SIZE
    for row, pair in enumerate(pairs):
        crops = images[pair["positions"]]
        heatmaps, classes, scores = explainer.explain(crops)
        assert (classes == pair["predicted"]).all()
        for column, (crop, heatmap, top1, score) in enumerate(
            zip(crops, heatmaps, classes, scores)
        ):
            left, top = evaluation_report.panel_origin(row, column)
            expected = gradcam.overlay(crop.astype(np.uint8), heatmap, f"{names[top1]} {score:.2f}")
            # Batches of other sizes may round a heatmap's last bits differently.
            np.testing.assert_allclose(
                pixels[top : top + size, left : left + size],
                np.asarray(expected),
                atol=1,
                err_msg=f"{row}, {column}",
            )

    export = serving.export_model(
        model,
        tmp_path / "exports",
        input_pipeline.load_dataset_info(synthetic_records)["class_names"],
        log=lambda message: None,
    )
    result = run_main(
        evaluate.main,
        "--no_progress",
        "--model",
        export,
        "--data_dir",
        synthetic_records,
        "--output_dir",
        tmp_path / "export_report",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert evaluation_report.NO_GRADCAM_NOTE in result.stdout
    assert sorted(path.name for path in (tmp_path / "export_report").iterdir()) == sorted(
        evaluation_report.REPORT_FILES
    )
