"""The paper's metrics, top-1 and top-5 error on the central crop or with 10-crop testing (four
corners and the centre, and their mirrors, softmax outputs averaged), and what a person looks
at after training: the confusion matrix, the most confused pairs, per-class precision and
recall. Works on a `.keras` file, a training run folder, or an exported SavedModel (through
its `predict_pixels` signature, on the same crops).

Ranking: classes are ordered by probability, ties broken by the lower class index (as
`tf.math.top_k` and the serving signature's top-5 do). Top-1 is the first class, top-5 the
first five; the confusion matrix counts (true class, top-1 class).

The report folder that evaluate.py writes from these sums is evaluation_report.py's.
"""

import dataclasses
import pathlib
import time

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.progress import progress_bar
from alexnet_keras_base.config import TOP_K
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import VALIDATION, DataDir, ExportBase, RunDir

MOST_CONFUSED_PAIRS = 10
# Drawn for a Keras model only (evaluation_report.py): a row of images per most confused
# pair, with their heatmaps.
CONFUSED_IMAGE_PAIRS = 3
IMAGES_PER_PAIR = 4


# === Models ===


@dataclasses.dataclass
class LoadedModel:
    """Something that turns float32 pixel batches (batch, 227, 227, 3) into probabilities."""

    probabilities: object  # callable: images -> float32 (batch, classes)
    num_classes: int
    kind: str  # "keras" or "saved_model"
    path: pathlib.Path
    parameters: int


def keras_probabilities(model):
    """softmax(model(images)) of a Keras model, as a tf.function."""
    return tf.function(
        lambda images: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
    )


def resolve_model_path(path, best=False):
    """A `.keras` file, a training run folder (its alexnet.keras, or alexnet_best.keras with
    `best`), an export version folder, or an export base (its highest version)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UsageError(f"--model {path} does not exist")
    if path.is_dir() and not ExportBase.is_version(path):
        run_model = RunDir(path).model_file(best)
        if run_model.is_file():
            return run_model
        export = ExportBase.resolve(path)
        if export is not None:
            return export
        raise UsageError(
            f"--model {path} holds neither {run_model.name} (a training run "
            f"folder) nor a SavedModel or export versions"
        )
    if best:
        raise UsageError("--best takes a training run folder as --model")
    return path


def load_model(path, best=False):
    """-> LoadedModel for whatever `resolve_model_path` accepts."""
    import keras

    from alexnet_keras.serving import PREDICT_PIXELS

    path = resolve_model_path(path, best)
    if path.is_dir():
        loaded = tf.saved_model.load(str(path))
        if PREDICT_PIXELS not in loaded.signatures:
            raise UsageError(
                f"{path} has no {PREDICT_PIXELS} signature: export it with export/export_model.py"
            )
        signature = loaded.signatures[PREDICT_PIXELS]
        num_classes = signature.structured_outputs["probabilities"].shape[-1]
        parameters = sum(
            int(np.prod(variable.shape)) for variable in getattr(loaded, "trainable_variables", [])
        )
        return LoadedModel(
            lambda images: signature(images=images)["probabilities"],
            num_classes,
            "saved_model",
            path,
            parameters,
        )
    try:
        model = keras.models.load_model(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"cannot load {path} as a Keras model: {error}") from None
    return LoadedModel(
        keras_probabilities(model), model.output.shape[-1], "keras", path, model.count_params()
    )


# === Metrics ===


class EvaluationSums:
    """Running sums over evaluated examples, turned into the report's metrics by `metrics`."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.top_k = min(TOP_K, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)  # [true, predicted]
        self.top5_hits = 0
        self.loss_sum = 0.0
        # Per example, in reading order, to find the images of the most confused pairs.
        self.labels = []
        self.top1 = []

    def add(self, probabilities, labels):
        """probabilities (batch, classes), labels (batch,) ints in [0, classes)."""
        probabilities = np.asarray(probabilities, np.float64)
        labels = np.asarray(labels, np.int64)
        ranked = np.argsort(-probabilities, axis=1, kind="stable")  # ties: lower index first
        np.add.at(self.confusion, (labels, ranked[:, 0]), 1)
        self.labels.append(labels)
        self.top1.append(ranked[:, 0])
        self.top5_hits += int((ranked[:, : self.top_k] == labels[:, None]).any(axis=1).sum())
        true_probabilities = probabilities[np.arange(len(labels)), labels]
        self.loss_sum += float(-np.log(np.maximum(true_probabilities, 1e-12)).sum())

    @property
    def examples(self):
        return int(self.confusion.sum())

    def metrics(self):
        examples = self.examples
        if examples == 0:
            raise UsageError("no examples were evaluated")
        correct = np.diag(self.confusion)
        per_class_examples = self.confusion.sum(axis=1)
        per_class_predicted = self.confusion.sum(axis=0)
        recall = _ratio(correct, per_class_examples)
        precision = _ratio(correct, per_class_predicted)
        top1_accuracy = float(correct.sum() / examples)
        top5_accuracy = self.top5_hits / examples
        return {
            "examples": examples,
            "top1_error": 1 - top1_accuracy,
            "top5_error": 1 - top5_accuracy,
            "top1_accuracy": top1_accuracy,
            "top5_accuracy": top5_accuracy,
            "loss": self.loss_sum / examples,
            "per_class_examples": per_class_examples.tolist(),
            "per_class_top1_error": [None if value is None else 1 - value for value in recall],
            "per_class_precision": precision,
            "per_class_recall": recall,
            "confusion_matrix": self.confusion.tolist(),
            "most_confused": most_confused_pairs(self.confusion),
            "most_confused_examples": self.confused_examples(),
        }

    def confused_examples(self, pairs=CONFUSED_IMAGE_PAIRS, per_pair=IMAGES_PER_PAIR):
        """The `pairs` most confused pairs, each with the positions (in reading order, from 0)
        of its first `per_pair` images: the fewest records to read again to show them."""
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        top1 = np.concatenate(self.top1) if self.top1 else np.zeros(0, np.int64)
        return [
            {
                **pair,
                "positions": np.flatnonzero((labels == pair["true"]) & (top1 == pair["predicted"]))[
                    :per_pair
                ].tolist(),
            }
            for pair in most_confused_pairs(self.confusion, pairs)
        ]


def _ratio(numerators, denominators):
    """Elementwise ratios; None where the denominator is 0 (no examples, no predictions)."""
    return [float(n / d) if d else None for n, d in zip(numerators, denominators)]


def most_confused_pairs(confusion, count=MOST_CONFUSED_PAIRS):
    """The `count` largest off-diagonal cells, as (true, predicted, count), largest first
    (ties: lower true class, then lower predicted class)."""
    off_diagonal = np.array(confusion, np.int64)
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
    pairs = [np.unravel_index(index, off_diagonal.shape) for index in order]
    return [
        {
            "true": int(true),
            "predicted": int(predicted),
            "count": int(off_diagonal[true, predicted]),
        }
        for true, predicted in pairs
        if off_diagonal[true, predicted] > 0
    ]


# === Evaluation ===


def batch_probabilities(probabilities_fn, images, ten_crops):
    """Probabilities of a batch; for (batch, 10, 227, 227, 3) images the ten crops' softmax
    outputs are averaged (the paper), not their logits."""
    if not ten_crops:
        return probabilities_fn(images)
    crops = tf.reshape(images, (-1, *images.shape[2:]))  # (batch * 10, 227, 227, 3)
    crop_probabilities = probabilities_fn(crops)
    return tf.reduce_mean(
        tf.reshape(crop_probabilities, (-1, 10, crop_probabilities.shape[-1])), axis=1
    )


def evaluate(
    probabilities_fn,
    num_classes,
    file_pattern,
    num_examples,
    batch_size=64,
    ten_crops=False,
    progress=None,
):
    """Evaluates on TFRecords; -> the metrics dict (see EvaluationSums.metrics) plus
    images_per_second. `probabilities_fn` maps float32 pixel batches to probabilities;
    `progress(total, description)` may return a tqdm-like bar."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    dataset = input_pipeline.make_eval_dataset(
        file_pattern, batch_size, num_examples=num_examples, ten_crops=ten_crops
    )
    sums = EvaluationSums(num_classes)
    with progress_bar(progress, num_examples, "evaluating") as bar:
        start = time.perf_counter()
        for images, labels in dataset:
            keep = labels.numpy() != input_pipeline.PADDING_LABEL
            if not keep.any():
                continue
            probabilities = np.asarray(batch_probabilities(probabilities_fn, images, ten_crops))
            labels = labels.numpy()[keep]
            if labels.max() >= num_classes:
                raise UsageError(
                    f"label {labels.max()} in {file_pattern} is outside the "
                    f"model's {num_classes} classes"
                )
            sums.add(probabilities[keep], labels)
            bar.update(len(labels))
    seconds = time.perf_counter() - start
    if sums.examples == 0:
        raise UsageError(f"no examples read from {file_pattern}")
    metrics = sums.metrics()
    metrics["images_per_second"] = sums.examples / seconds
    return metrics


def evaluate_model(
    model_path,
    data_dir,
    split=VALIDATION,
    batch_size=64,
    ten_crops=False,
    best=False,
    progress=None,
):
    """Loads a model (see `resolve_model_path`) and evaluates it on a split of the
    converter's output folder; -> the full report dict."""
    data_dir = pathlib.Path(data_dir)
    records = DataDir(data_dir)
    info = records.checked(splits=(split,))
    pattern = records.shard_pattern(split)
    model = load_model(model_path, best)
    if model.num_classes != info["num_classes"]:
        raise UsageError(
            f"{model.path} predicts {model.num_classes} classes but {data_dir} "
            f"has {info['num_classes']} (labels.txt, dataset.json)"
        )
    metrics = evaluate(
        model.probabilities,
        model.num_classes,
        pattern,
        info["num_examples"][split],
        batch_size,
        ten_crops,
        progress,
    )
    return {
        "model": {"path": str(model.path), "kind": model.kind, "parameters": model.parameters},
        "data": {
            "data_dir": str(data_dir),
            "split": split,
            "num_examples": info["num_examples"],
            "num_classes": info["num_classes"],
        },
        "ten_crops": ten_crops,
        "crop": "10-crop" if ten_crops else "central crop",
        "class_names": input_pipeline.readable_class_names(info),
        "class_ids": info["class_names"],
        **metrics,
    }


def default_output_dir(model_path, split, ten_crops, best=False):
    """`<model folder>/evaluation_<split>[_10crop]/`; for version V of an export base B,
    `B_vV_evaluation_<split>[_10crop]/` beside B, out of the folder TF Serving watches."""
    path = resolve_model_path(model_path, best)
    suffix = f"{split}{'_10crop' if ten_crops else ''}"
    if path.is_dir():  # an export version
        base = path.parent
        return base.parent / f"{base.name}_v{path.name}_evaluation_{suffix}"
    return path.parent / f"evaluation_{suffix}{'_best' if best else ''}"
