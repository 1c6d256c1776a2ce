import json
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import build_alexnet, evaluation, input_pipeline, mean_layer


@pytest.fixture(scope="module")
def model_and_data(synthetic_records, tmp_path_factory):
    keras.utils.set_random_seed(4)
    model = build_alexnet(num_classes=4, width_multiplier=0.125, kernel_init="he_normal",
                          input_scale=1 / 64)
    info = input_pipeline.load_dataset_info(synthetic_records)
    mean_layer(model).set_mean(info["rgb_mean"])
    path = tmp_path_factory.mktemp("model") / "alexnet.keras"
    model.save(path)
    return model, path, synthetic_records, info


def records(data_dir):
    for path in sorted(data_dir.glob("validation-*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)):
            yield input_pipeline.parse_example(record)


@pytest.mark.parametrize("ten_crops", [False, True])
def test_errors_match_a_direct_computation(model_and_data, ten_crops):
    model, _, data_dir, info = model_and_data
    count = info["num_examples"]["validation"]
    # batch 5 does not divide the count: padding must not be counted.
    report = evaluation.evaluate(model, str(data_dir / "validation-*.tfrecord"), count,
                                 batch_size=5, ten_crops=ten_crops)
    probabilities, labels = [], []
    for image_bytes, label in records(data_dir):
        if ten_crops:
            crops = input_pipeline.ten_crop(image_bytes)
            probabilities.append(tf.nn.softmax(model(crops, training=False)).numpy().mean(axis=0))
        else:
            image = input_pipeline.preprocess_for_eval(image_bytes)[tf.newaxis]
            probabilities.append(tf.nn.softmax(model(image, training=False)).numpy()[0])
        labels.append(int(label))
    probabilities, labels = np.array(probabilities), np.array(labels)
    ranked = np.argsort(-probabilities, axis=1)
    assert report["examples"] == count == len(labels)
    assert report["top1_error"] == pytest.approx(np.mean(ranked[:, 0] != labels))
    top4 = np.mean(~(ranked[:, :4] == labels[:, None]).any(axis=1))  # 4 classes: top-5 = all
    assert report["top5_error"] == pytest.approx(top4) == 0.0
    expected_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert report["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_script_writes_a_report_and_rejects_bad_input(model_and_data, tmp_path, python,
                                                      repo_root):
    _, path, data_dir, _ = model_and_data
    result = subprocess.run([python, "evaluate.py", "--model", path, "--data_dir", data_dir,
                             "--report", tmp_path / "report.json"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert f"top-1 error {report['top1_error']:.4f}" in result.stdout
    assert len(report["per_class_top1_error"]) == 4
    missing = subprocess.run([python, "evaluate.py", "--model", tmp_path / "none.keras",
                              "--data_dir", data_dir], cwd=repo_root, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
