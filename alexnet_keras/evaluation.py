"""The paper's metrics: top-1 and top-5 error, on the central crop or with 10-crop testing
(four corners and the centre, and their mirrors, softmax outputs averaged)."""

import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline


def evaluate(model, file_pattern, num_examples, batch_size=64, ten_crops=False):
    """-> dict of top1_error, top5_error, loss, examples, and per-class top-1 error."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_classes = model.output.shape[-1]
    dataset = input_pipeline.make_dataset(file_pattern, batch_size, training=False,
                                          num_examples=num_examples, ten_crops=ten_crops)

    @tf.function
    def probabilities(images):
        if ten_crops:
            # (batch, 10, 227, 227, 3) -> one forward pass over batch * 10 crops.
            crops = tf.reshape(images, (-1, *images.shape[2:]))
            crop_probabilities = tf.nn.softmax(model(crops, training=False))
            return tf.reduce_mean(tf.reshape(crop_probabilities, (-1, 10, num_classes)), axis=1)
        return tf.nn.softmax(model(images, training=False))

    top_k = min(5, num_classes)
    correct_top1 = correct_top5 = loss_sum = seen = 0
    per_class_total = np.zeros(num_classes)
    per_class_correct = np.zeros(num_classes)
    for images, labels in dataset:
        keep = labels.numpy() != input_pipeline.PADDING_LABEL
        if not keep.any():
            continue
        predicted = probabilities(images).numpy()[keep]
        labels = labels.numpy()[keep]
        ranked = np.argsort(-predicted, axis=1)
        hit1 = ranked[:, 0] == labels
        correct_top1 += int(hit1.sum())
        correct_top5 += int((ranked[:, :top_k] == labels[:, None]).any(axis=1).sum())
        loss_sum += float(-np.log(np.maximum(predicted[np.arange(len(labels)), labels], 1e-12)).sum())
        seen += len(labels)
        np.add.at(per_class_total, labels, 1)
        np.add.at(per_class_correct, labels, hit1)
    if seen == 0:
        raise ValueError(f"no examples read from {file_pattern}")
    return {
        "examples": seen,
        "ten_crops": ten_crops,
        "top1_error": 1 - correct_top1 / seen,
        "top5_error": 1 - correct_top5 / seen,
        "loss": loss_sum / seen,
        "per_class_top1_error": (1 - per_class_correct / np.maximum(per_class_total, 1)).tolist(),
    }


def evaluate_model_file(model_path, data_dir, split="validation", batch_size=64, ten_crops=False):
    """Loads a `.keras` file and evaluates it on a split of the converter's output folder."""
    model_path, data_dir = pathlib.Path(model_path), pathlib.Path(data_dir)
    if not model_path.exists():
        raise ValueError(f"model file {model_path} does not exist")
    info = input_pipeline.load_dataset_info(data_dir)
    model = keras.models.load_model(model_path)
    if model.output.shape[-1] != info["num_classes"]:
        raise ValueError(f"{model_path} predicts {model.output.shape[-1]} classes but "
                         f"{data_dir} has {info['num_classes']}")
    report = evaluate(model, str(data_dir / f"{split}-*.tfrecord"),
                      info["num_examples"][split], batch_size=batch_size, ten_crops=ten_crops)
    report["class_names"] = info["class_names"]
    report["model"] = str(model_path)
    report["split"] = split
    return report


def write_report(report, path):
    pathlib.Path(path).write_text(json.dumps(report, indent=2))
