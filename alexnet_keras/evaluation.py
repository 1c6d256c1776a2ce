"""The paper's metrics, top-1 and top-5 error on the central crop or with 10-crop testing (four
corners and the centre, and their mirrors, softmax outputs averaged), and what a person looks
at after training: the confusion matrix, the most confused pairs, per-class precision and
recall. Works on a `.keras` file, a training run folder, or an exported SavedModel (through
its `predict_pixels` signature, on the same crops).

Ranking: classes are ordered by probability, ties broken by the lower class index (as
`tf.math.top_k` and the serving signature's top-5 do). Top-1 is the first class, top-5 the
first five; the confusion matrix counts (true class, top-1 class).

For a Keras model the report folder also shows a few images of the most confused pairs with
their Grad-CAM heatmaps (`most_confused_images.png`); an exported SavedModel has no gradients
to draw them with.
"""

import csv
import dataclasses
import json
import pathlib
import time

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from alexnet_keras import input_pipeline
from alexnet_keras.gradcam import GradCam, overlay
from alexnet_keras.plots import pyplot, save_figure
from alexnet_keras.progress import progress_bar
from alexnet_keras_base.config import TOP_K
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import replaced_atomically, write_text_atomically
from alexnet_keras_base.layout import VALIDATION, DataDir, ExportBase, RunDir

MOST_CONFUSED_PAIRS = 10
MAX_HEATMAP_CLASSES = 100  # above this, the heatmap shows the most confused classes only
HEATMAP_SUBSET = 30
REPORT_FILES = ("report.json", "confusion_matrix.png", "per_class.csv", "most_confused.png")
# Drawn for a Keras model only: a row of images per most confused pair, with their heatmaps.
CONFUSED_IMAGES_FILE = "most_confused_images.png"
CONFUSED_IMAGE_PAIRS = 3
IMAGES_PER_PAIR = 4
NO_GRADCAM_NOTE = (
    f"no {CONFUSED_IMAGES_FILE}: an exported SavedModel has no gradients for "
    f"Grad-CAM (evaluate the .keras file for it)"
)


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
    dataset = input_pipeline.make_dataset(
        file_pattern, batch_size, training=False, num_examples=num_examples, ten_crops=ten_crops
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
    info = DataDir(data_dir).checked(splits=(split,))
    pattern = DataDir(data_dir).shard_pattern(split)
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


# === Reports ===


def write_report(report, path):
    write_text_atomically(path, json.dumps(report, indent=2))


def write_report_folder(report, output_dir):
    """report.json, per_class.csv, confusion_matrix.png and most_confused.png."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_report(report, output_dir / "report.json")
    with replaced_atomically(output_dir / "per_class.csv") as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "name", "examples", "top1_error", "precision", "recall"])
            for index, name in enumerate(report["class_names"]):
                writer.writerow(
                    [index, name, report["per_class_examples"][index]]
                    + [
                        "" if value is None else f"{value:.6f}"
                        for value in (
                            report["per_class_top1_error"][index],
                            report["per_class_precision"][index],
                            report["per_class_recall"][index],
                        )
                    ]
                )
    plot_confusion_matrix(report, output_dir / "confusion_matrix.png")
    plot_most_confused(report, output_dir / "most_confused.png")
    if report["model"]["kind"] == "keras":
        write_confused_images(report, output_dir / CONFUSED_IMAGES_FILE)
    return output_dir


def report_files(report):
    """The files `write_report_folder` writes for `report`."""
    if report["model"]["kind"] == "keras":
        return (*REPORT_FILES, CONFUSED_IMAGES_FILE)
    return REPORT_FILES


def heatmap_classes(confusion, limit=MAX_HEATMAP_CLASSES, subset=HEATMAP_SUBSET):
    """Class indices the heatmap shows: all up to `limit` classes, else the `subset` classes
    with the most confusions (as true or as predicted class), in class order."""
    confusion = np.asarray(confusion)
    if len(confusion) <= limit:
        return list(range(len(confusion)))
    off_diagonal = confusion - np.diag(np.diag(confusion))
    involvement = off_diagonal.sum(axis=0) + off_diagonal.sum(axis=1)
    return sorted(np.argsort(-involvement, kind="stable")[:subset].tolist())


def plot_confusion_matrix(report, path):
    plt = pyplot()
    confusion = np.asarray(report["confusion_matrix"])
    shown = heatmap_classes(confusion)
    matrix = confusion[np.ix_(shown, shown)]
    names = [report["class_names"][index] for index in shown]
    side = min(4 + 0.16 * len(shown), 22)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    # Rows as fractions of each true class, so small and large classes read alike.
    rows = matrix / np.maximum(confusion[shown].sum(axis=1, keepdims=True), 1)
    image = axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    font = max(4, min(9, 300 / max(len(shown), 1)))
    axis.set_xticks(range(len(shown)), names, rotation=90, fontsize=font)
    axis.set_yticks(range(len(shown)), names, fontsize=font)
    if len(shown) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                axis.text(
                    column,
                    row,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if rows[row, column] > 0.5 else "black",
                )
    title = (
        f"Confusion matrix, {report['data']['split']}, {report['crop']}: top-1 error "
        f"{report['top1_error']:.3f}"
    )
    if len(shown) < len(confusion):
        title += f"\n(the {len(shown)} most confused of {len(confusion)} classes)"
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def plot_most_confused(report, path):
    plt = pyplot()
    pairs = report["most_confused"]
    names = report["class_names"]
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.45 * max(len(pairs), 1)))
    if pairs:
        labels = [f"{names[pair['true']]} -> {names[pair['predicted']]}" for pair in pairs]
        axis.barh(range(len(pairs)), [pair["count"] for pair in pairs], color="tab:red")
        axis.set_yticks(range(len(pairs)), labels)
        axis.invert_yaxis()
        axis.set(xlabel="images")
    else:
        axis.text(0.5, 0.5, "no confusions", ha="center", va="center")
        axis.set_axis_off()
    axis.set_title(
        f"Most confused pairs (true -> predicted), {report['data']['split']}, {report['crop']}"
    )
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


# === The most confused images ===

PANEL_SIZE = input_pipeline.CROP_SIZE
PANEL_GAP = 8
ROW_TITLE_HEIGHT = 22
TITLE_FONT_SIZE = 15


def read_evaluation_crops(file_pattern, positions, batch_size=64):
    """The central crops (uint8 (len(positions), 227, 227, 3), in the order of `positions`)
    of the records at `positions` of the evaluation's reading order; reads no further than
    the last one."""
    if not positions:
        return np.zeros((0, PANEL_SIZE, PANEL_SIZE, 3), np.uint8)
    wanted = set(positions)
    found = {}
    dataset = input_pipeline.make_dataset(file_pattern, batch_size, training=False)
    start = 0
    for images, _ in dataset:
        for position in wanted & set(range(start, start + len(images))):
            found[position] = images[position - start].numpy().astype(np.uint8)
        start += len(images)
        if len(found) == len(wanted):
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise UsageError(f"{file_pattern} ends before record {missing[0]} (read {start})")
    return np.stack([found[position] for position in positions])


def panel_origin(row, column):
    """The top left corner of panel (row, column) in `most_confused_images.png`."""
    return (
        PANEL_GAP + column * (PANEL_SIZE + PANEL_GAP),
        PANEL_GAP + row * (ROW_TITLE_HEIGHT + PANEL_SIZE + PANEL_GAP) + ROW_TITLE_HEIGHT,
    )


def write_confused_images(report, path, batch_size=64):
    """One row per most confused pair ("true -> predicted"), its first images' central crops
    overlaid with the Grad-CAM heatmap of the class the model gives each, captioned with
    that class and its probability. The model is the report's `.keras` file."""
    import keras

    pairs = [pair for pair in report["most_confused_examples"] if pair["positions"]]
    names = report["class_names"]
    data = report["data"]
    positions = [position for pair in pairs for position in pair["positions"]]
    crops = read_evaluation_crops(
        DataDir(data["data_dir"]).shard_pattern(data["split"]), positions, batch_size
    )
    if positions:
        explainer = GradCam(keras.models.load_model(report["model"]["path"]))
        heatmaps, classes, scores = explainer.explain(crops.astype(np.float32))
    columns = max([len(pair["positions"]) for pair in pairs], default=1)
    width = panel_origin(0, columns)[0]
    height = panel_origin(max(len(pairs), 1), 0)[1] - ROW_TITLE_HEIGHT
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(TITLE_FONT_SIZE)
    if not pairs:
        draw.text((PANEL_GAP, PANEL_GAP), "no confusions", fill=(0, 0, 0), font=font)
    index = 0
    for row, pair in enumerate(pairs):
        left, top = panel_origin(row, 0)
        draw.text(
            (left, top - ROW_TITLE_HEIGHT + 2),
            f"{names[pair['true']]} -> {names[pair['predicted']]}: {pair['count']} "
            f"images ({report['data']['split']}, central crop)",
            fill=(0, 0, 0),
            font=font,
        )
        for column in range(len(pair["positions"])):
            caption = f"{names[classes[index]]} {scores[index]:.2f}"
            sheet.paste(overlay(crops[index], heatmaps[index], caption), panel_origin(row, column))
            index += 1
    with replaced_atomically(path) as temporary:
        sheet.save(temporary, format="PNG")
    return path


def summary(report, worst=5, pairs=5):
    """The printed summary: overall errors, the worst classes, the most confused pairs."""
    names = report["class_names"]
    lines = [
        f"{report['data']['split']}, {report['crop']}, {report['examples']} images, "
        f"{len(names)} classes, {report['images_per_second']:.1f} images/s",
        f"  {'':14s}{'error':>8s}{'accuracy':>10s}",
        f"  {'top-1':14s}{report['top1_error']:8.4f}{report['top1_accuracy']:10.4f}",
        f"  {'top-5':14s}{report['top5_error']:8.4f}{report['top5_accuracy']:10.4f}",
        f"  {'loss':14s}{report['loss']:8.4f}",
    ]
    errors = [
        (error, index)
        for index, error in enumerate(report["per_class_top1_error"])
        if error is not None
    ]
    lines.append(f"  worst classes{'top-1 error':>22s}{'images':>8s}")
    for error, index in sorted(errors, key=lambda item: (-item[0], item[1]))[:worst]:
        lines.append(
            f"    {names[index][:24]:24s}{error:11.4f}{report['per_class_examples'][index]:8d}"
        )
    if report["most_confused"]:
        lines.append(f"  most confused (true -> predicted){'images':>10s}")
        for pair in report["most_confused"][:pairs]:
            label = f"{names[pair['true']]} -> {names[pair['predicted']]}"
            lines.append(f"    {label[:33]:33s}{pair['count']:8d}")
    return "\n".join(lines)
