"""predict.py: a whole collection through a .keras model or an export, one row per image,
bad images as error rows, true labels, the error equal to evaluate.py's, fc7 features, a
kill -9 and a SIGTERM resumed, memory that does not grow with the number of files."""

import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import alexnet_keras
from alexnet_keras import prediction, prediction_outputs, serving
from alexnet_keras.synthetic import make_synthetic_dataset
from alexnet_keras_base.layout import DataDir
from alexnet_keras_cli import evaluate as evaluate_command
from alexnet_keras_cli import predict as predict_command
from commands import run_main
from small_models import saved_small_alexnet, written_labels

CLASSES = ("circle", "square", "star")  # the labels, in the model's class order
GOOD_PER_CLASS = 5
# name -> (bytes, the words its error row must hold)
BAD_FILES = {
    "empty.jpg": (b"", "empty image bytes"),
    "text.png": (b"this is not an image at all", "not a JPEG, PNG, GIF, BMP or WebP"),
    "truncated.jpg": (None, "JPEG"),  # the first half of a good JPEG (below)
    "huge.png": (None, "above the limit"),  # a PNG header announcing 20000 x 20000 pixels
}
SKIPPED = ("README.txt", ".DS_Store", "notes.md")


def png_header(width, height):
    """A PNG whose header announces width x height: the limit refuses it before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """An ImageFolder of good synthetic JPEGs, damaged files in one class folder, a dangling
    link, and files that are not images (skipped)."""
    root = tmp_path_factory.mktemp("collection")
    images = root / "images"
    make_synthetic_dataset(images, classes=CLASSES, images_per_class=GOOD_PER_CLASS, seed=3)
    good = (images / "star" / "star_0000.jpg").read_bytes()
    contents = {"truncated.jpg": good[: len(good) // 2], "huge.png": png_header(20000, 20000)}
    for name, (data, _) in BAD_FILES.items():
        (images / "star" / name).write_bytes(contents.get(name, data))
    (images / "star" / "gone.jpg").symlink_to(root / "missing.jpg")
    for name in SKIPPED:
        (images / "square" / name).write_text("not an image")
    (images / ".hidden").mkdir()
    (images / ".hidden" / "x.jpg").write_bytes(good)
    return images


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "alexnet.keras"
    return saved_small_alexnet(path, len(CLASSES), 11)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    return written_labels(tmp_path_factory.mktemp("labels") / "labels.txt", CLASSES)


@pytest.fixture(scope="module")
def export_dir(model_file, tmp_path_factory):
    model = keras.models.load_model(model_file)
    base = tmp_path_factory.mktemp("exports") / "alexnet"
    return serving.export_model(model, base, list(CLASSES), log=lambda message: None)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def predict(*arguments):
    return run_main(predict_command.main, "--no_progress", *arguments)


@pytest.fixture(scope="module")
def keras_rows(model_file, labels_file, collection, tmp_path_factory):
    output = tmp_path_factory.mktemp("keras_rows") / "rows.jsonl"
    result = predict(
        "--model",
        model_file,
        "--labels",
        labels_file,
        "--output",
        output,
        "--batch_size",
        4,
        collection,
    )
    return result, read_rows(output)


def test_a_folder_gets_a_row_per_image_and_an_error_row_per_bad_file(keras_rows, collection):
    result, rows = keras_rows
    assert result.returncode == predict_command.SOME_FAILED, result.stderr
    expected_paths = sorted(
        [
            str(collection / name / f"{name}_{index:04d}.jpg")
            for name in CLASSES
            for index in range(GOOD_PER_CLASS)
        ]
        + [str(collection / "star" / name) for name in [*BAD_FILES, "gone.jpg"]]
    )
    # Every image once, in the listing's order (sorted, folder by folder); other files and
    # hidden folders skipped.
    assert [row["path"] for row in rows] == expected_paths
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    for name, (_, words) in BAD_FILES.items():
        assert words in by_name[name]["error"], by_name[name]
        assert by_name[name]["labels"] == [] and by_name[name]["scores"] == []
    assert by_name["gone.jpg"]["error"] == "cannot read the file: No such file or directory"
    answered = [row for row in rows if row["error"] is None]
    assert len(answered) == len(CLASSES) * GOOD_PER_CLASS
    for row in answered:
        assert row["true_label"] == row["path"].split("/")[-2]
        assert sorted(row["labels"]) == sorted(CLASSES)  # top-5 of 3 classes: all of them
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert abs(sum(row["scores"]) - 1) < 1e-5
    failed = len(BAD_FILES) + 1
    assert f"{len(rows)} images: {len(answered)} answered, {failed} could not be" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_rows_are_the_models_softmax_on_preprocess_for_eval(keras_rows, model_file):
    _, rows = keras_rows
    answered = [row for row in rows if row["error"] is None]
    model = keras.models.load_model(model_file)
    pixels = tf.stack(
        [alexnet_keras.preprocess_for_eval(tf.io.read_file(row["path"])) for row in answered]
    )
    probabilities = tf.nn.softmax(model(pixels, training=False)).numpy()
    for row, expected in zip(answered, probabilities):
        order = np.argsort(-expected, kind="stable")
        assert row["labels"] == [CLASSES[index] for index in order]
        np.testing.assert_allclose(row["scores"], expected[order], rtol=1e-5, atol=1e-7)


def test_an_export_gives_the_same_rows_as_its_keras_model(
    keras_rows, export_dir, collection, tmp_path
):
    _, expected = keras_rows
    output = tmp_path / "export.jsonl"
    result = predict(
        "--model", export_dir.parent, "--output", output, "--batch_size", 4, collection
    )
    assert result.returncode == predict_command.SOME_FAILED, result.stderr
    rows = read_rows(output)
    assert [row["path"] for row in rows] == [row["path"] for row in expected]
    for row, reference in zip(rows, expected):
        assert row["labels"] == reference["labels"], row["path"]
        assert row["error"] == reference["error"], row["path"]
        assert row["true_label"] == reference["true_label"]
        np.testing.assert_allclose(row["scores"], reference["scores"], rtol=1e-5, atol=1e-6)


def test_csv_holds_the_same_rows_flattened(
    model_file, labels_file, collection, keras_rows, tmp_path
):
    _, expected = keras_rows
    output = tmp_path / "rows.csv"
    result = predict(
        "--model", model_file, "--labels", labels_file, "--output", output, "--top_k", 2, collection
    )
    assert result.returncode == predict_command.SOME_FAILED, result.stderr
    with open(output, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == [
        "path",
        "true_label",
        "error",
        "label_1",
        "score_1",
        "label_2",
        "score_2",
    ]
    assert [row["path"] for row in table] == [row["path"] for row in expected]
    for row, reference in zip(table, expected):
        assert row["error"] == (reference["error"] or "")
        if reference["error"] is None:
            assert [row["label_1"], row["label_2"]] == reference["labels"][:2]
            np.testing.assert_allclose(
                [float(row["score_1"]), float(row["score_2"])], reference["scores"][:2], rtol=1e-5
            )


def test_records_rows_and_their_error_equal_evaluate(synthetic_records, tmp_path):
    """On our records, the true labels are the records' and the printed top-1 / top-5 error
    equals evaluate.py's central-crop figure on the same split."""
    class_names = DataDir(synthetic_records).read_labels()
    model_path = saved_small_alexnet(tmp_path / "alexnet.keras", len(class_names), 5)
    labels = written_labels(tmp_path / "labels.txt", class_names)
    output = tmp_path / "rows.jsonl"
    result = predict(
        "--model",
        model_path,
        "--labels",
        labels,
        "--output",
        output,
        "--split",
        "validation",
        synthetic_records,
    )
    assert result.returncode == 0, result.stderr
    rows = read_rows(output)
    info = DataDir(synthetic_records).read_info()
    assert len(rows) == info["num_examples"]["validation"]
    assert all(
        row["path"].split("#")[0].startswith(str(synthetic_records / "validation-")) for row in rows
    )
    assert {row["true_label"] for row in rows} == set(class_names)

    report = tmp_path / "report.json"
    evaluated = run_main(
        evaluate_command.main,
        "--model",
        model_path,
        "--data_dir",
        synthetic_records,
        "--report",
        report,
        "--no_progress",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(report.read_text())
    top1 = sum(row["labels"][0] != row["true_label"] for row in rows) / len(rows)
    assert top1 == pytest.approx(metrics["top1_error"])
    assert (
        f"{len(rows)} images with a known class: top-1 error {metrics['top1_error']:.4f}, "
        f"top-5 error {metrics['top5_error']:.4f}"
    ) in result.stdout


def test_fc7_features_equal_the_models_fc7(
    model_file, labels_file, collection, keras_rows, tmp_path
):
    features_dir = tmp_path / "features"
    result = predict(
        "--model",
        model_file,
        "--labels",
        labels_file,
        "--output",
        tmp_path / "rows.jsonl",
        "--features_dir",
        features_dir,
        collection,
    )
    assert result.returncode == predict_command.SOME_FAILED, result.stderr
    with open(features_dir / prediction_outputs.FEATURES_INDEX, newline="") as handle:
        index = list(csv.DictReader(handle))
    answered = [row["path"] for row in keras_rows[1] if row["error"] is None]
    assert [entry["path"] for entry in index] == answered
    features = {name: np.load(features_dir / name) for name in {entry["file"] for entry in index}}
    stacked = np.stack([features[entry["file"]][int(entry["row"])] for entry in index])
    assert stacked.dtype == np.float32

    model = keras.models.load_model(model_file)
    fc7 = keras.Model(model.inputs, model.get_layer("fc7").output)
    pixels = tf.stack(
        [alexnet_keras.preprocess_for_eval(tf.io.read_file(path)) for path in answered]
    )
    expected = fc7(pixels, training=False).numpy()
    assert stacked.shape == expected.shape == (len(answered), 512)
    assert (expected >= 0).all() and (expected > 0).any()  # after its ReLU, not all zero
    np.testing.assert_allclose(stacked, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_explain_writes_a_heatmap_of_every_answered_image(
    model_file, labels_file, collection, keras_rows, tmp_path
):
    from alexnet_keras.gradcam import GradCam

    heatmaps = tmp_path / "heatmaps"
    result = predict(
        "--model",
        model_file,
        "--labels",
        labels_file,
        "--output",
        tmp_path / "rows.jsonl",
        "--explain",
        heatmaps,
        collection,
    )
    assert result.returncode == predict_command.SOME_FAILED, result.stderr
    rows = keras_rows[1]
    written = sorted(path.relative_to(heatmaps) for path in heatmaps.rglob("*.png"))
    expected = sorted(
        prediction_outputs.explanation_path(heatmaps, row["path"]).relative_to(heatmaps)
        for row in rows
        if row["error"] is None
    )
    assert written == expected and len(written) == len(CLASSES) * GOOD_PER_CLASS
    # Each picture: the 227 x 227 crop, tinted by the heatmap of its top-1 class, which is
    # the row's first label.
    row = next(row for row in rows if row["error"] is None)
    picture = np.asarray(Image.open(prediction_outputs.explanation_path(heatmaps, row["path"])))
    assert picture.shape == (227, 227, 3)
    crop = alexnet_keras.preprocess_for_eval(tf.io.read_file(row["path"]))
    assert np.abs(picture.astype(float) - crop.numpy()).mean() > 5  # not the bare crop
    _, classes, scores = GradCam(keras.models.load_model(model_file)).explain(crop[tf.newaxis])
    assert CLASSES[classes[0]] == row["labels"][0]
    assert scores[0] == pytest.approx(row["scores"][0], rel=1e-4)


def test_an_exports_features_signature_gives_the_same_features(
    model_file, labels_file, collection, export_dir, tmp_path
):
    shards = {}
    for name, model, labels in (
        ("keras", model_file, ["--labels", labels_file]),
        ("export", export_dir, []),
    ):
        folder = tmp_path / name
        result = predict(
            "--model",
            model,
            *labels,
            "--output",
            tmp_path / f"{name}.jsonl",
            "--features_dir",
            folder,
            collection,
        )
        assert result.returncode == predict_command.SOME_FAILED, result.stderr
        shards[name] = np.load(folder / prediction_outputs.features_shard_name(0))
        assert (folder / prediction_outputs.FEATURES_INDEX).read_text() == (
            tmp_path / "keras" / prediction_outputs.FEATURES_INDEX
        ).read_text()
    assert shards["export"].shape == shards["keras"].shape == (15, 512)
    np.testing.assert_allclose(
        shards["export"], shards["keras"], rtol=1e-5, atol=1e-5 * np.abs(shards["keras"]).max()
    )


def test_feature_shards_resume_and_publish_whole(tmp_path, monkeypatch):
    """A shard is a whole .npy or absent; a rerun keeps exactly the rows the journal has."""
    monkeypatch.setattr(prediction_outputs, "FEATURES_PER_SHARD", 4)
    rows = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)
    shards = prediction_outputs.FeatureShards(tmp_path, 3, 0)
    shards.add(rows[:6])  # one full shard published, 2 rows in the next
    assert np.array_equal(np.load(tmp_path / "features-00000.npy"), rows[:4])
    assert not (tmp_path / "features-00001.npy").exists()
    shards.add(rows[6:9])  # shard 1 published with rows 4-7; row 8 pending
    # A kill after these features but before their rows reached the journal: the journal
    # holds 5 answered rows, so the rerun keeps 5 and drops the rest, even those published.
    shards = prediction_outputs.FeatureShards(tmp_path, 3, 5)
    assert not (tmp_path / "features-00001.npy").exists()
    shards.add(rows[5:11])
    shards.finish([f"image{index}" for index in range(11)])
    stacked = np.concatenate(
        [np.load(tmp_path / prediction_outputs.features_shard_name(index)) for index in range(3)]
    )
    assert np.array_equal(stacked, rows)
    assert not list(tmp_path.glob(".*"))  # no partial shard left


def test_a_finished_output_is_not_overwritten(
    keras_rows, model_file, labels_file, collection, tmp_path
):
    output = tmp_path / "rows.jsonl"
    output.write_text("precious\n")
    result = predict("--model", model_file, "--labels", labels_file, "--output", output, collection)
    assert result.returncode == 2
    assert f"error: {output} exists: a finished output is not overwritten" in result.stderr
    assert output.read_text() == "precious\n"
    result = predict(
        "--model",
        model_file,
        "--labels",
        labels_file,
        "--output",
        output,
        "--overwrite",
        collection,
    )
    assert result.returncode == predict_command.SOME_FAILED
    assert len(read_rows(output)) == len(keras_rows[1])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--output", "{tmp}/x.txt", "{images}"], "must end in .jsonl or .csv"),
        (["--output", "{tmp}/x.jsonl", "{tmp}/nothing"], "does not exist"),
        (["--output", "{tmp}/x.jsonl", "--top_k", "0", "{images}"], "--top_k must be >= 1"),
        (["--output", "{tmp}/x.jsonl", "--batch_size", "0", "{images}"], "--batch_size must be"),
        (["--output", "gs://bucket/x.jsonl", "{images}"], "writes to a local path"),
    ],
)
def test_bad_usage_is_one_error_line(
    arguments, message, model_file, labels_file, collection, tmp_path
):
    arguments = [argument.format(tmp=tmp_path, images=collection) for argument in arguments]
    result = predict("--model", model_file, "--labels", labels_file, *arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.jsonl"))


def test_explain_with_an_export_is_refused(export_dir, collection, tmp_path):
    result = predict(
        "--model",
        export_dir,
        "--output",
        tmp_path / "x.jsonl",
        "--explain",
        tmp_path / "heatmaps",
        collection,
    )
    assert result.returncode == 2
    assert "error: --explain needs a .keras model" in result.stderr


def test_a_journal_of_other_settings_is_not_mixed_in(model_file, labels_file, collection, tmp_path):
    output = tmp_path / "rows.jsonl"
    settings = tmp_path / f".{output.name}.partial.json"
    journal = tmp_path / f".{output.name}.partial"
    journal.write_text(json.dumps(prediction.error_row("x.jpg", "killed run")) + "\n")
    settings.write_text(json.dumps({"model": "another.keras", "top_k": 5}))
    result = predict("--model", model_file, "--labels", labels_file, "--output", output, collection)
    assert result.returncode == 2
    assert "holds the rows of an unfinished run with other settings" in result.stderr
    assert "model another.keras then" in result.stderr
    assert not output.exists()


# === Processes: kill -9, SIGTERM, memory ===


@pytest.fixture(scope="module")
def many_images(collection, tmp_path_factory):
    """120 small images (copies of the collection's good ones under other names)."""
    folder = tmp_path_factory.mktemp("many")
    sources = sorted(collection.glob("*/*_0*.jpg"))
    for index in range(120):
        source = sources[index % len(sources)]
        target = folder / source.parent.name / f"{index:04d}.jpg"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
    return folder


def start_predict(python, repo_root, *arguments):
    return subprocess.Popen(
        [python, "predict.py", "--no_progress", *map(str, arguments)],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(journal, count, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{journal} did not reach {count} rows")


def stop(process, journal, rows, signal_number):
    """Sends `signal_number` once the journal holds `rows` rows; -> the rows it then holds,
    after the process ended, and its standard error."""
    wait_for_rows(journal, rows, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    return journal.read_bytes().count(b"\n"), stderr


def test_a_stopped_run_resumes_with_every_image_once(
    python, repo_root, model_file, labels_file, many_images, tmp_path
):
    """SIGTERM (143), then kill -9 of the rerun, then a rerun that finishes: every image
    once, the output never under its name before the end, the features row for row."""
    output = tmp_path / "rows.jsonl"
    arguments = [
        "--model",
        model_file,
        "--labels",
        labels_file,
        "--output",
        output,
        "--batch_size",
        4,
        "--features_dir",
        tmp_path / "features",
        many_images,
    ]
    journal = tmp_path / f".{output.name}.partial"

    done, stderr = stop(start_predict(python, repo_root, *arguments), journal, 20, signal.SIGTERM)
    assert "SIGTERM: stopped with" in stderr and "rerun the same command" in stderr, stderr
    assert not output.exists()  # never half an output under its name
    process = start_predict(python, repo_root, *arguments)
    done_before, _ = stop(process, journal, done + 20, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    assert done + 20 <= done_before < len(list(many_images.glob("*/*.jpg")))

    rerun = subprocess.run(
        [python, "predict.py", "--no_progress", *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {output}: {done_before} images already have a row" in rerun.stdout
    rows = read_rows(output)
    paths = [row["path"] for row in rows]
    assert sorted(paths) == sorted(str(path) for path in many_images.glob("*/*.jpg"))
    assert len(set(paths)) == len(paths)
    assert not journal.exists()
    # The features of the resumed runs are those of an uninterrupted one, row for row.
    with open(tmp_path / "features" / prediction_outputs.FEATURES_INDEX, newline="") as handle:
        index = list(csv.DictReader(handle))
    assert [entry["path"] for entry in index] == paths
    features = np.load(tmp_path / "features" / "features-00000.npy")
    model = keras.models.load_model(model_file)
    fc7 = keras.Model(model.inputs, model.get_layer("fc7").output)
    check = [0, done - 1, done, done_before - 1, done_before, len(paths) - 1]
    pixels = tf.stack(
        [alexnet_keras.preprocess_for_eval(tf.io.read_file(paths[row])) for row in check]
    )
    np.testing.assert_allclose(
        features[check], fc7(pixels, training=False).numpy(), rtol=1e-5, atol=1e-5
    )


PEAK_RSS = """
import resource, sys
sys.argv[0] = "predict.py"
from alexnet_keras_cli.predict import main
status = main(sys.argv[1:])
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(status)
"""


def test_memory_does_not_grow_with_the_number_of_files(
    python, repo_root, model_file, labels_file, collection, tmp_path
):
    """Peak RSS for 3,000 images at most 1.1x that for 300: the rows stream to disk."""
    # 256 x 256, the stored size: decoded without a resize, so the test takes seconds.
    source = tf.io.encode_jpeg(
        tf.cast(
            tf.random.stateless_uniform((256, 256, 3), seed=(1, 2), maxval=256, dtype=tf.int32),
            tf.uint8,
        )
    ).numpy()
    peaks = {}
    for count in (300, 3000):
        folder = tmp_path / f"images{count}"
        folder.mkdir()
        for index in range(count):
            (folder / f"{index:05d}.jpg").write_bytes(source)
        arguments = [
            "--no_progress",
            "--model",
            model_file,
            "--labels",
            labels_file,
            "--output",
            tmp_path / f"rows{count}.jsonl",
            "--batch_size",
            32,
            folder,
        ]
        result = subprocess.run(
            [python, "-c", PEAK_RSS, *map(str, arguments)],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(repo_root)},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[count] = int(result.stdout.split("peak_rss_kb")[-1])
        assert len(read_rows(tmp_path / f"rows{count}.jsonl")) == count
    assert peaks[3000] <= 1.1 * peaks[300], peaks


def test_images_made_by_pil_in_every_format_are_answered(model_file, labels_file, tmp_path):
    for image_format, suffix in (
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("WEBP", "webp"),
    ):
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(buffer, image_format)
        (tmp_path / "in" / "x").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / "x" / f"picture.{suffix}").write_bytes(buffer.getvalue())
    output = tmp_path / "rows.jsonl"
    result = predict(
        "--model", model_file, "--labels", labels_file, "--output", output, tmp_path / "in"
    )
    assert result.returncode == 0, result.stderr
    assert [row["error"] for row in read_rows(output)] == [None] * 5
