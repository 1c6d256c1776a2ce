"""What evaluate.py writes for a person to look at: the report folder (report.json,
per_class.csv, the confusion matrix, the most confused pairs, and for a Keras model a few
images of the most confused pairs with their Grad-CAM heatmaps) and the summary it prints."""

import csv
import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from alexnet_keras import input_pipeline
from alexnet_keras.gradcam import GradCam, overlay
from alexnet_keras.plots import pyplot, save_figure
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import replaced_atomically, write_text_atomically
from alexnet_keras_base.layout import DataDir

MAX_HEATMAP_CLASSES = 100  # above this, the heatmap shows the most confused classes only
HEATMAP_SUBSET = 30
REPORT_FILES = ("report.json", "confusion_matrix.png", "per_class.csv", "most_confused.png")
# Drawn for a Keras model only: a row of images per most confused pair, with their heatmaps.
CONFUSED_IMAGES_FILE = "most_confused_images.png"
NO_GRADCAM_NOTE = (
    f"no {CONFUSED_IMAGES_FILE}: an exported SavedModel has no gradients for "
    f"Grad-CAM (evaluate the .keras file for it)"
)


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
    dataset = input_pipeline.make_eval_dataset(file_pattern, batch_size)
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
