"""The paper's Figure 4: validation images and the training images whose fc7 activations (the
4096-D vector after ReLU, before dropout) are nearest in Euclidean distance. The search reads
the cached features (feature_cache.py) in blocks, so memory stays bounded by the block size,
never N x N nor N x 4096.
"""

import json
import os
import pathlib
import struct

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.feature_cache import (
    FEATURE_LAYER,
    feature_extractor,
    index_records,
    train_features,
)
from alexnet_keras.plots import pyplot, save_figure
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import write_text_atomically
from alexnet_keras_base.layout import TRAIN, VALIDATION, Feature

NEIGHBOURS_FILE = "nearest_neighbours.png"
NEIGHBOURS_JSON = "nearest_neighbours.json"
NUM_QUERIES = 6
NUM_NEIGHBOURS = 6
QUERY_SEED = 0
SEARCH_BLOCK_ROWS = 8192  # rows of fc7_train.npy per step of the search (~300 MB as float64)
NEIGHBOUR_TILE_INCHES = 1.9
NEIGHBOURS_DPI = 100


def nearest_neighbours(queries, features_path, count=NUM_NEIGHBOURS, block_rows=SEARCH_BLOCK_ROWS):
    """The `count` rows of the .npy matrix at `features_path` (N, D) nearest to each query
    (Q, D) in Euclidean distance; -> (indices (Q, count) int64, distances (Q, count) float64),
    nearest first, ties to the lower row.

    Blocks of `block_rows` rows are read in turn (float64, |q|^2 - 2 q.x + |x|^2 as one matrix
    product per block) and merged into the running best: memory is O(Q * block_rows + block_rows
    * D), whatever N."""
    queries = np.asarray(queries, np.float64)
    query_norms = np.einsum("ij,ij->i", queries, queries)[:, np.newaxis]
    rows = np.load(features_path, mmap_mode="r").shape[0]
    best_indices = np.empty((len(queries), 0), np.int64)
    best_squared = np.empty((len(queries), 0), np.float64)
    for start in range(0, rows, block_rows):
        # A new mapping per block: the pages read are released with it, so the process never
        # holds more than one block of the file, even at ImageNet scale.
        features = np.load(features_path, mmap_mode="r")
        block = np.array(features[start : start + block_rows], np.float64)  # (B, D)
        del features
        squared = query_norms - 2.0 * queries @ block.T + np.einsum("ij,ij->i", block, block)
        indices = np.broadcast_to(np.arange(start, start + len(block)), squared.shape)
        # Earlier rows come first in the concatenation, so a stable sort keeps ties in row order.
        merged_squared = np.concatenate([best_squared, squared], axis=1)
        merged_indices = np.concatenate([best_indices, indices], axis=1)
        order = np.argsort(merged_squared, axis=1, kind="stable")[:, :count]
        best_squared = np.take_along_axis(merged_squared, order, axis=1)
        best_indices = np.take_along_axis(merged_indices, order, axis=1)
        del block  # before the next block is read, so that two never coexist
    return best_indices, np.sqrt(np.maximum(best_squared, 0.0))


def choose_queries(labels, count=NUM_QUERIES, seed=QUERY_SEED):
    """Indices of `count` images: one from each of `count` different classes when there are
    that many, else one from every class and the rest at random; seeded, in (class, index)
    order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))[:count]
    chosen = [int(rng.choice(np.flatnonzero(labels == label))) for label in classes]
    others = np.setdiff1d(np.arange(len(labels)), chosen)
    extra = rng.choice(others, size=min(count - len(chosen), len(others)), replace=False)
    chosen += [int(index) for index in extra]
    return sorted(chosen, key=lambda index: (labels[index], index))


def read_record(files, shard, position):
    """The serialized record at `position` of shard `files[shard]`, found by walking the
    TFRecord framing (8-byte length, 4-byte CRC, data, 4-byte CRC) without reading the
    records before it."""
    with tf.io.gfile.GFile(files[shard], "rb") as handle:
        for _ in range(position):
            (length,) = struct.unpack("<Q", handle.read(8))
            handle.seek(length + 8, os.SEEK_CUR)
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(4, os.SEEK_CUR)
        record = handle.read(length)
    if len(record) != length:
        raise UsageError(f"{files[shard]} ends before record {position}")
    return record


def _read_example(files, shard, position):
    """-> (227x227 uint8 central crop, label, file name) of one record."""
    features = tf.io.parse_single_example(
        read_record(files, shard, position),
        {
            **input_pipeline.FEATURES,
            Feature.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        },
    )
    image = input_pipeline.preprocess_for_eval(features[Feature.ENCODED])
    filename = features[Feature.FILENAME].numpy().decode() or f"{files[shard]}#{position}"
    return image.numpy().astype(np.uint8), int(features[Feature.LABEL]), filename


def write_neighbour_figures(
    model,
    data_dir,
    output_dir,
    class_names,
    batch_size=64,
    progress=None,
    log=print,
    seed=QUERY_SEED,
):
    """nearest_neighbours.png and .json: NUM_QUERIES validation images (seeded) and their
    NUM_NEIGHBOURS nearest training images in fc7 space; -> the JSON dict."""
    output_dir = pathlib.Path(output_dir)
    features_path, train_index = train_features(
        model, data_dir, output_dir, batch_size, progress, log
    )
    validation = index_records(data_dir, VALIDATION)
    queries = [
        _read_example(validation.files, validation.shard[index], validation.position[index])
        for index in choose_queries(validation.labels, seed=seed)
    ]
    extractor = feature_extractor(model)
    images = np.stack([image for image, _, _ in queries]).astype(np.float32)
    # Through float16, as the training features are stored: a duplicate is at distance 0.
    query_features = extractor(images, training=False).numpy().astype(np.float16)
    indices, distances = nearest_neighbours(query_features, features_path)
    rows = []
    for (image, label, filename), row_indices, row_distances in zip(queries, indices, distances):
        neighbours = []
        for train_row, distance in zip(row_indices, row_distances):
            neighbour_image, neighbour_label, neighbour_file = _read_example(
                train_index.files, train_index.shard[train_row], train_index.position[train_row]
            )
            neighbours.append(
                {
                    "image": neighbour_image,
                    "label": neighbour_label,
                    "filename": neighbour_file,
                    "distance": float(distance),
                    "train_index": int(train_row),
                }
            )
        rows.append(
            {"image": image, "label": label, "filename": filename, "neighbours": neighbours}
        )
    _plot_neighbours(rows, class_names, output_dir / NEIGHBOURS_FILE)
    report = {
        "model": model.name,
        "features": f"{FEATURE_LAYER} after ReLU, before dropout ({query_features.shape[1]}-D), "
        f"float16, central crop",
        "distance": "Euclidean",
        "seed": seed,
        "queries": [_without_images(row, class_names) for row in rows],
    }
    write_text_atomically(output_dir / NEIGHBOURS_JSON, json.dumps(report, indent=2))
    return report


def _without_images(row, class_names):
    described = {
        "split": VALIDATION,
        "filename": row["filename"],
        "label": row["label"],
        "class": class_names[row["label"]],
    }
    described["neighbours"] = [
        {
            "split": TRAIN,
            "filename": neighbour["filename"],
            "label": neighbour["label"],
            "class": class_names[neighbour["label"]],
            "distance": neighbour["distance"],
            "train_index": neighbour["train_index"],
        }
        for neighbour in row["neighbours"]
    ]
    return described


def neighbour_figure_size(queries, neighbours=NUM_NEIGHBOURS):
    """(width, height) in pixels of nearest_neighbours.png."""
    return (
        round((neighbours + 1) * NEIGHBOUR_TILE_INCHES * NEIGHBOURS_DPI),
        round((queries * NEIGHBOUR_TILE_INCHES + 0.5) * NEIGHBOURS_DPI),
    )


def _plot_neighbours(rows, class_names, path):
    plt = pyplot()
    columns = 1 + max(len(row["neighbours"]) for row in rows)
    width, height = neighbour_figure_size(len(rows), columns - 1)
    figure, axes = plt.subplots(
        len(rows), columns, squeeze=False, figsize=(width / NEIGHBOURS_DPI, height / NEIGHBOURS_DPI)
    )
    for axis_row, row in zip(axes, rows):
        tiles = [(row["image"], f"query: {class_names[row['label']]}", "black")]
        for neighbour in row["neighbours"]:
            same = neighbour["label"] == row["label"]
            tiles.append(
                (
                    neighbour["image"],
                    f"{class_names[neighbour['label']]}\nd = {neighbour['distance']:.3g}",
                    "tab:green" if same else "tab:red",
                )
            )
        for axis, (image, title, colour) in zip(axis_row, tiles):
            axis.imshow(image)
            axis.set_title(title, fontsize=9, color=colour)
            axis.set_xticks([])
            axis.set_yticks([])
        for spine in axis_row[0].spines.values():
            spine.set(linewidth=3, color="black")
    figure.suptitle(
        "Validation images (left) and the training images nearest in fc7 "
        "(Euclidean; green: same class)",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (height / NEIGHBOURS_DPI)))
    save_figure(figure, path, dpi=NEIGHBOURS_DPI)
