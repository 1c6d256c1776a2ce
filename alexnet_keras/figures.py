"""The paper's Figures 3 and 4 for a trained model.

Figure 3: the learned conv1 kernels as a grid of RGB tiles, each kernel scaled to its own
range, the kernels read by conv2's first group in the top rows and the second group's below
(in the paper, the first group's came out largely colour-agnostic, the second's
colour-specific). Figure 4: validation images and the training images whose fc7 activations
(the 4096-D vector after ReLU, before dropout) are nearest in Euclidean distance.

Built for ImageNet scale: fc7 of the training split is computed once in batches and kept on
disk as float16 (`fc7_train.npy`, N x 4096; about 10 GB for 1.28 M images), with the identity
of the model and data that produced it, and reused while they match. The search reads it in
blocks, so memory stays bounded by the block size, never N x N nor N x 4096.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import struct

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.evaluation import resolve_model_path
from alexnet_keras.plots import pyplot, save_figure
from alexnet_keras.progress import progress_bar
from alexnet_keras.steps import weights_fingerprint
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import process_alive, replaced_atomically, write_text_atomically
from alexnet_keras_base.layout import TRAIN, VALIDATION, DataDir, Feature

KERNELS_FILE = "conv1_kernels.png"
NEIGHBOURS_FILE = "nearest_neighbours.png"
NEIGHBOURS_JSON = "nearest_neighbours.json"
FEATURES_FILE = "fc7_train.npy"  # float16 (N, 4096), row i = training record i
FEATURES_INDEX_FILE = "fc7_train_index.npz"  # label, shard and position of each row
FEATURES_INFO_FILE = "fc7_train.json"  # written last: the cache is complete when it exists
FIGURE_FILES = (KERNELS_FILE, NEIGHBOURS_FILE, NEIGHBOURS_JSON, FEATURES_FILE)
FEATURE_LAYER = "fc7"
NUM_QUERIES = 6
NUM_NEIGHBOURS = 6
QUERY_SEED = 0
KERNEL_TILE_SCALE = 4  # an 11x11 kernel becomes a 44x44-pixel tile
KERNEL_COLUMNS = 16  # the paper's figure: 3 rows of 16 kernels per group
TILE_GAP = 2  # pixels between tiles
GROUP_GAP = 14  # pixels between the groups' blocks of rows
MARGIN = 10
SEARCH_BLOCK_ROWS = 8192  # rows of fc7_train.npy per step of the search (~300 MB as float64)
NEIGHBOUR_TILE_INCHES = 1.9
NEIGHBOURS_DPI = 100
BACKGROUND = 255


# === Figure 3: conv1 kernels ===


def conv1_channel_groups(model):
    """conv1's output channels as conv2's groups read them: [(start, stop), ...], one pair per
    group (conv1 -> norm1 -> pool1 keep the channel order)."""
    conv1, conv2 = _layer(model, "conv1"), _layer(model, "conv2")
    channels = int(conv1.kernel.shape[-1])
    groups = int(getattr(conv2, "groups", 1))
    size = channels // groups
    return [(group * size, (group + 1) * size) for group in range(groups)]


def normalized_kernels(kernel):
    """(height, width, 3, channels) weights -> (channels, height, width, 3) in [0, 1], each
    kernel scaled from its own minimum to its own maximum (a flat kernel becomes mid grey)."""
    tiles = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)


def colour_share(kernel):
    """Per kernel, the share of its variance that differs between the RGB channels: 0 for a
    grey-level kernel (the same pattern in R, G and B), near 1 for a colour-opponent one."""
    tiles = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)  # (channels, h, w, 3)
    centred = tiles - tiles.mean(axis=(1, 2, 3), keepdims=True)
    colour = centred - centred.mean(axis=-1, keepdims=True)
    total = (centred**2).sum(axis=(1, 2, 3))
    return np.where(total > 0, (colour**2).sum(axis=(1, 2, 3)) / np.where(total > 0, total, 1), 0.0)


@dataclasses.dataclass
class KernelGrid:
    """The conv1 kernels laid out as the paper's Figure 3."""

    image: np.ndarray  # uint8 (height, width, 3), no caption
    tile_origins: list  # (top, left) of channel c's tile, in channel order
    tile_size: int
    groups: list  # conv1_channel_groups
    caption: str


def kernel_grid(model, columns=KERNEL_COLUMNS, scale=KERNEL_TILE_SCALE):
    """-> KernelGrid: channel c's kernel at tile_origins[c], row-major within its group, each
    group's tiles in their own block of rows, the first group's on top."""
    kernel = _numpy(_layer(model, "conv1").kernel)  # (11, 11, 3, channels)
    groups = conv1_channel_groups(model)
    tiles = normalized_kernels(kernel)
    tile_height, tile_width = kernel.shape[0] * scale, kernel.shape[1] * scale
    columns = min(columns, max(stop - start for start, stop in groups))
    origins = []
    top = 0
    for start, stop in groups:
        for position in range(stop - start):
            row, column = divmod(position, columns)
            origins.append((top + row * (tile_height + TILE_GAP), column * (tile_width + TILE_GAP)))
        rows = -(-(stop - start) // columns)
        top += rows * (tile_height + TILE_GAP) - TILE_GAP + GROUP_GAP
    height = top - GROUP_GAP
    width = columns * (tile_width + TILE_GAP) - TILE_GAP
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    for (tile_top, tile_left), tile in zip(origins, tiles):
        pixels = np.round(255 * tile).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        image[tile_top : tile_top + tile_height, tile_left : tile_left + tile_width] = pixels
    return KernelGrid(
        image, origins, tile_height, groups, _kernel_caption(model, kernel, groups, tiles.shape[0])
    )


def _kernel_caption(model, kernel, groups, count):
    shares = colour_share(kernel)
    height, width, depth, _ = kernel.shape
    lines = [
        f"{model.name}: the {count} conv1 kernels ({height}x{width}x{depth}), each "
        f"scaled to its own range"
    ]
    for number, (start, stop) in enumerate(groups, 1):
        where = "top" if number == 1 else "below" if len(groups) == 2 else f"block {number}"
        lines.append(
            f"{where}: channels {start}-{stop - 1}, read by conv2's group {number}; "
            f"colour share of variance {shares[start:stop].mean():.2f}"
        )
    return "\n".join(lines)


def write_kernel_figure(model, path):
    """conv1_kernels.png: the kernel grid with its caption beneath; -> the KernelGrid."""
    from PIL import Image, ImageDraw, ImageFont

    grid = kernel_grid(model)
    font = ImageFont.load_default(size=13)
    lines = grid.caption.splitlines()
    line_height = 17
    text_width = max(int(font.getlength(line)) for line in lines)
    width = max(grid.image.shape[1], text_width) + 2 * MARGIN
    height = grid.image.shape[0] + 3 * MARGIN + line_height * len(lines)
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    canvas.paste(Image.fromarray(grid.image), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text(
            (MARGIN, grid.image.shape[0] + 2 * MARGIN + number * line_height),
            line,
            fill=(0, 0, 0),
            font=font,
        )
    with replaced_atomically(path) as temporary:
        canvas.save(temporary, format="PNG")
    return grid


def log_conv1_kernels(model, summary_writer, step):
    """Logs the kernel grid as the TensorBoard image "conv1_kernels" (caption as its
    description) at `step`; -> the KernelGrid."""
    grid = kernel_grid(model)
    with summary_writer.as_default():
        tf.summary.image(
            "conv1_kernels", grid.image[np.newaxis], step=step, description=grid.caption
        )
    summary_writer.flush()
    return grid


# === fc7 features of the training split, cached on disk ===


def feature_extractor(model):
    """A model from the images to fc7 (after its ReLU, before dropout7)."""
    import keras

    return keras.Model(model.input, _layer(model, FEATURE_LAYER).output, name="fc7_features")


def _numpy(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        raise UsageError(
            f"model {model.name!r} has no {name} layer: the figures need the "
            f"AlexNet of build_alexnet"
        ) from None


def data_identity(data_dir, split=TRAIN):
    """A digest of dataset.json and the names and sizes of the split's shards."""
    data_dir = pathlib.Path(data_dir)
    digest = hashlib.sha256(DataDir(data_dir).dataset_file.read_bytes())
    for path in _shards(data_dir, split):
        digest.update(f"{pathlib.Path(path).name}:{tf.io.gfile.stat(path).length}".encode())
    return digest.hexdigest()


def _shards(data_dir, split):
    return input_pipeline.list_shards(DataDir(data_dir).shard_pattern(split))


def _located_records(files):
    """(shard index, position in the shard, serialized record) for every record, in shard
    order, the shards read in parallel."""

    def read_shard(shard_index, filename):
        return (
            tf.data.TFRecordDataset(filename)
            .enumerate()
            .map(lambda position, record: (shard_index, position, record))
        )

    shards = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
    return shards.interleave(
        read_shard,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _labelled(record):
    _, label = input_pipeline.parse_example(record)
    return label


@dataclasses.dataclass
class RecordIndex:
    """Where each record of a split is, and its label: row i is the split's record i."""

    files: list
    labels: np.ndarray  # int32 (N,)
    shard: np.ndarray  # int32 (N,)
    position: np.ndarray  # int64 (N,)


def index_records(data_dir, split):
    """-> RecordIndex of a split, reading only the labels (no image decoding)."""
    files = _shards(data_dir, split)
    dataset = (
        _located_records(files)
        .map(
            lambda shard, position, record: (shard, position, _labelled(record)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(4096)
    )
    parts = [tuple(tensor.numpy() for tensor in batch) for batch in dataset]
    if not parts:
        raise UsageError(f"the {split} split of {data_dir} holds no records")
    shard, position, labels = (np.concatenate(column) for column in zip(*parts))
    return RecordIndex(
        files, labels.astype(np.int32), shard.astype(np.int32), position.astype(np.int64)
    )


def train_features(model, data_dir, cache_dir, batch_size=64, progress=None, log=print):
    """-> (path of fc7_train.npy, RecordIndex of the train split): fc7 of every training image
    (central crop), float16, computed in batches unless `cache_dir` holds it for this very
    model and data. Written under a temporary name and renamed; the info file that marks the
    cache complete is written last, so a crash never leaves a cache that would be reused."""
    data_dir, cache_dir = pathlib.Path(data_dir), pathlib.Path(cache_dir)
    features_path = cache_dir / FEATURES_FILE
    index_path = cache_dir / FEATURES_INDEX_FILE
    info_path = cache_dir / FEATURES_INFO_FILE
    identity = {
        "model": weights_fingerprint(model, with_architecture=True),
        "data": data_identity(data_dir),
        "layer": FEATURE_LAYER,
        "crop": "central",
        "dtype": "float16",
    }
    files = _shards(data_dir, TRAIN)
    cached = _cached_features(features_path, index_path, info_path, identity, files)
    if cached is not None:
        log(f"reusing {features_path} ({cached.labels.size} training images)")
        return features_path, cached

    expected = input_pipeline.load_dataset_info(data_dir)["num_examples"].get(TRAIN, 0)
    if not expected:
        raise UsageError(f"{data_dir} has no training images to search")
    extractor = feature_extractor(model)
    dimension = int(extractor.output.shape[-1])
    log(
        f"computing fc7 of {expected} training images -> {features_path} "
        f"({expected * dimension * 2 / 1e9:.2f} GB)"
    )
    compute = tf.function(lambda images: tf.cast(extractor(images, training=False), tf.float16))
    dataset = (
        _located_records(files)
        .map(
            lambda shard, position, record: (shard, position, *_eval_image_and_label(record)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    info_path.unlink(missing_ok=True)  # from here on, whatever is in cache_dir is stale
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(features_path)
    needed = expected * dimension * 2
    available = shutil.disk_usage(cache_dir).free
    if needed > available:
        raise UsageError(
            f"{features_path} needs {needed / 1e9:.1f} GB but {cache_dir} has "
            f"{available / 1e9:.1f} GB free: pass another --output_dir"
        )
    labels = np.empty(expected, np.int32)
    shard_of = np.empty(expected, np.int32)
    position_of = np.empty(expected, np.int64)
    rows = 0
    with replaced_atomically(features_path) as temporary:
        # The header and the file's full size come from open_memmap; rows are then written
        # through a plain file, so the written pages are not held in this process's memory.
        header = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=np.float16, shape=(expected, dimension)
        )
        data_offset = header.offset
        del header
        with (
            progress_bar(progress, expected, "fc7 of the training images") as bar,
            open(temporary, "r+b") as handle,
        ):
            handle.seek(data_offset)
            for shard, position, images, batch_labels in dataset:
                count = len(batch_labels)
                if rows + count > expected:
                    raise UsageError(_count_mismatch(data_dir, expected, "more"))
                handle.write(np.ascontiguousarray(compute(images).numpy()).tobytes())
                labels[rows : rows + count] = batch_labels.numpy()
                shard_of[rows : rows + count] = shard.numpy()
                position_of[rows : rows + count] = position.numpy()
                rows += count
                bar.update(count)
        if rows != expected:
            raise UsageError(_count_mismatch(data_dir, expected, f"only {rows}"))
    with replaced_atomically(index_path) as temporary:
        np.savez(temporary, labels=labels, shard=shard_of, position=position_of)
    write_text_atomically(
        info_path,
        json.dumps(
            {
                **identity,
                "data_dir": str(data_dir),
                "rows": expected,
                "dimension": dimension,
                "files": [pathlib.Path(name).name for name in files],
            },
            indent=2,
        ),
    )
    return features_path, RecordIndex(files, labels, shard_of, position_of)


def _remove_abandoned_temporaries(path):
    """Deletes the temporary copies of `path` left by killed runs (whose process is gone):
    at ImageNet scale each is 10 GB."""
    for temporary in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        pid = temporary.name.removesuffix(path.suffix).rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            temporary.unlink(missing_ok=True)


def _eval_image_and_label(record):
    image_bytes, label = input_pipeline.parse_example(record)
    return input_pipeline.preprocess_for_eval(image_bytes), label


def _count_mismatch(data_dir, expected, found):
    return (
        f"{data_dir}/dataset.json counts {expected} training images but its train shards "
        f"hold {found}: convert the data again with data/build_tfrecords.py"
    )


def _cached_features(features_path, index_path, info_path, identity, files):
    """The cached RecordIndex if all three files exist and were made from `identity` (which
    names `files`, the train shards)."""
    if not (features_path.is_file() and index_path.is_file() and info_path.is_file()):
        return None
    info = json.loads(info_path.read_text())
    if any(info.get(key) != value for key, value in identity.items()):
        return None
    features = np.load(features_path, mmap_mode="r")
    if features.dtype != np.float16 or features.shape != (info["rows"], info["dimension"]):
        return None
    del features
    arrays = np.load(index_path)
    return RecordIndex(files, arrays["labels"], arrays["shard"], arrays["position"])


# === Nearest neighbours ===


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


# === Both figures ===


def keras_model_path(model_path, best=False):
    """The .keras file behind `model_path`; refuses an exported SavedModel."""
    path = resolve_model_path(model_path, best)
    if path.is_dir():
        raise UsageError(
            f"--figures needs the Keras model: {path} is an exported SavedModel, "
            f"which keeps neither conv1's kernels nor fc7 by name. Pass the "
            f".keras file or the training run folder it was exported from"
        )
    return path


def write_figures(
    model_path, data_dir, output_dir, best=False, batch_size=64, progress=None, log=print
):
    """Writes conv1_kernels.png, nearest_neighbours.png and .json (and the fc7_train.npy
    cache) into `output_dir` for a .keras file or a training run folder."""
    import keras

    model = keras.models.load_model(keras_model_path(model_path, best))
    # The nearest-neighbour figure searches the training images for validation images.
    info = DataDir(data_dir).checked()
    output_dir = pathlib.Path(output_dir)
    write_kernel_figure(model, output_dir / KERNELS_FILE)
    write_neighbour_figures(
        model, data_dir, output_dir, info["class_names"], batch_size, progress, log
    )
    return output_dir
