"""Image folders -> sharded TFRecords, with the paper's rescale-and-crop and dataset statistics.

Layout read (as torchvision's ImageFolder): `IN/train/<class>/...` with an optional
`IN/val/<class>/...`, or `IN/<class>/...` directly. ImageNet's flat `IN/val/*.JPEG` (all
validation images in one folder) is read with a labels file (`read_val_labels`). Class index =
position of the class name in sorted order. Images are decoded with Pillow in worker processes; the parent process
writes the shards, each under a temporary name renamed when complete, so a killed run never
leaves a shard that looks finished and the same command completes the job.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import random
import sys
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from alexnet_keras_cli.errors import UsageError, WorkerDied
from alexnet_keras.files import replaced_atomically, write_text_atomically
from alexnet_keras.progress import progress_bar
from alexnet_keras_cli.config import CONVERTER_MAX_PIXELS as DEFAULT_MAX_PIXELS
from alexnet_keras_cli.layout import STORED_FORMAT, STORED_SIZE, DataDir, Feature

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
SPLIT_NAMES = ("train", "validation")
MIN_SHORTER_SIDE = 16
EXAMPLES_PER_SHARD = 1024
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclasses.dataclass(frozen=True)
class Item:
    """One source image: its path relative to the input folder, its label, and its size and
    modification time (so that a changed file changes its shard's fingerprint)."""

    relative_path: str
    label: int
    size: int = -1
    mtime_ns: int = -1

    @classmethod
    def of_file(cls, path, input_dir, label):
        try:
            status = os.stat(path)
            size, mtime_ns = status.st_size, status.st_mtime_ns
        except OSError:  # a dangling link: reported as unreadable when converted
            size, mtime_ns = -1, -1
        return cls(str(path.relative_to(input_dir)), label, size, mtime_ns)


@dataclasses.dataclass(frozen=True)
class Shard:
    split: str
    index: int
    count: int
    items: tuple

    @property
    def name(self):
        return DataDir.shard_name(self.split, self.index, self.count)

    def fingerprint(self, settings):
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for item in self.items:
            digest.update(
                f"{item.relative_path}\0{item.label}\0{item.size}\0{item.mtime_ns}\n".encode())
        return digest.hexdigest()


# === Discovery ===


def _image_files(folder):
    """Image files under `folder` (recursively, sorted), and the other files ignored."""
    images, ignored = [], []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            path = pathlib.Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(path)
            else:
                images.append(path)
    return images, ignored


def _class_folders(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _flat_images(folder):
    """Image files directly in `folder` (not in its subfolders), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def discover(input_dir, val_fraction=0.05, seed=0, val_labels=None, val_label_synsets=None):
    """Lists the splits: {"train": [Item...], "validation": [Item...]}, class names, ignored.
    `val_labels` labels a flat `val/` folder (see `read_val_labels`)."""
    input_dir = pathlib.Path(input_dir)
    if not input_dir.is_dir():
        raise UsageError(f"input folder {input_dir} does not exist or is not a folder")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    train_dir = input_dir / "train" if (input_dir / "train").is_dir() else input_dir
    val_dir = input_dir / "val" if train_dir != input_dir else None
    class_names = _class_folders(train_dir)
    if not class_names:
        raise UsageError(
            f"{train_dir} holds no class folders: expected {train_dir}/<class_name>/<image files>"
        )
    ignored = []
    per_class = {}
    for label, class_name in enumerate(class_names):
        images, skipped = _image_files(train_dir / class_name)
        ignored += skipped
        per_class[label] = [Item.of_file(p, input_dir, label) for p in images]
    if not any(per_class.values()):
        raise UsageError(f"no image files found in the class folders of {train_dir}")

    splits = {"train": [], "validation": []}
    flat_val = _flat_images(val_dir) if val_dir is not None and val_dir.is_dir() else []
    if val_labels is not None and not flat_val:
        raise UsageError(f"--val_labels {val_labels} labels a flat validation folder, but "
                         f"{input_dir / 'val'} holds no image files directly")
    if flat_val:
        if val_labels is None:
            raise UsageError(
                f"{val_dir} holds {len(flat_val)} image files directly, not in class folders: "
                f"give their labels with --val_labels (ImageNet's LOC_val_solution.csv, or a "
                f"file with one synset per line in sorted file order), or move them into "
                f"{val_dir}/<class_name>/ folders")
        if _class_folders(val_dir):
            raise UsageError(f"{val_dir} holds both image files and class folders: use one "
                             f"layout or the other")
        for items in per_class.values():
            splits["train"] += items
        labels = read_val_labels(val_labels, [p.name for p in flat_val], class_names,
                                 val_label_synsets)
        splits["validation"] = [Item.of_file(p, input_dir, label)
                                for p, label in zip(flat_val, labels)]
    elif val_dir is not None and val_dir.is_dir():
        unknown = sorted(set(_class_folders(val_dir)) - set(class_names))
        if unknown:
            raise UsageError(
                f"{val_dir} has class folders that {train_dir} lacks: {', '.join(unknown)}"
            )
        for items in per_class.values():
            splits["train"] += items
        for class_name in _class_folders(val_dir):
            images, skipped = _image_files(val_dir / class_name)
            ignored += skipped
            label = class_names.index(class_name)
            splits["validation"] += [Item.of_file(p, input_dir, label) for p in images]
    else:
        # Hold out a seeded fraction of each class.
        for label, items in per_class.items():
            shuffled = list(items)
            random.Random(f"{seed}-{label}").shuffle(shuffled)
            held_out = int(round(val_fraction * len(shuffled)))
            splits["validation"] += shuffled[:held_out]
            splits["train"] += shuffled[held_out:]
        if not splits["validation"]:
            raise UsageError(
                f"--val_fraction {val_fraction} holds out no image of {train_dir} and "
                f"{input_dir} has no val/ folder: training needs a validation split; raise "
                f"--val_fraction or add {input_dir}/val/")
    return splits, class_names, [str(p.relative_to(input_dir)) for p in ignored]


def read_val_labels(path, filenames, class_names, index_synsets_path=None):
    """Labels (indices into `class_names`) of the flat validation files `filenames` (sorted).

    `path` is either Kaggle's LOC_val_solution.csv (header `ImageId,PredictionString`; the
    first word of PredictionString is the synset of the file named ImageId), or a text file
    with one line per file in sorted file order: a synset, or a 1-based class index such as
    the devkit's ILSVRC2012_validation_ground_truth.txt. Indices are in the devkit's own class
    order, not the sorted one, so they need `index_synsets_path`: a file whose line k is the
    synset of index k (the devkit's meta.mat order)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"--val_labels {path} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        by_stem = {}
        for number, line in enumerate(lines[1:], start=2):
            image_id, _, prediction = line.partition(",")
            if not prediction.split():
                raise UsageError(f"{path} line {number} has no synset: {line!r}")
            by_stem[image_id.strip()] = prediction.split()[0]
        unlabelled = [name for name in filenames if pathlib.Path(name).stem not in by_stem]
        if unlabelled:
            raise UsageError(f"{path} has no label for {len(unlabelled)} of the "
                             f"{len(filenames)} validation files, e.g. {unlabelled[0]}")
        synsets = [by_stem[pathlib.Path(name).stem] for name in filenames]
        where = [f"the row of {pathlib.Path(name).stem}" for name in filenames]
    else:
        if len(lines) != len(filenames):
            raise UsageError(f"{path} has {len(lines)} labels but the flat validation folder "
                             f"has {len(filenames)} image files: one line per file, in sorted "
                             f"file order")
        where = [f"line {number}" for number in range(1, len(lines) + 1)]
        if all(line.isdigit() for line in lines):
            if index_synsets_path is None:
                raise UsageError(
                    f"{path} holds class indices, which are in the devkit's class order, not "
                    f"the sorted synsets: give that order with --val_label_synsets FILE (line "
                    f"k = synset of index k), or use a file of synsets / LOC_val_solution.csv")
            order = read_synset_list(index_synsets_path)
            out_of_range = [line for line in lines if not 1 <= int(line) <= len(order)]
            if out_of_range:
                raise UsageError(f"{path} has index {out_of_range[0]}, outside 1-{len(order)} "
                                 f"of --val_label_synsets {index_synsets_path}")
            synsets = [order[int(line) - 1] for line in lines]
        else:
            synsets = lines
    index_of = {name: index for index, name in enumerate(class_names)}
    for synset, place in zip(synsets, where):
        if synset not in index_of:
            raise UsageError(f"{path} {place} names class {synset!r}, which has no training "
                             f"folder")
    return [index_of[synset] for synset in synsets]


def read_synset_list(path):
    """The first word of each non-empty line of `path` (a synset, maybe followed by a name)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_class_names(path, class_names):
    """Readable names of `class_names` (synsets) from `path`: lines `synset<tab or space>name`,
    as the devkit's words.txt or Kaggle's LOC_synset_mapping.txt; extra synsets are ignored."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"--class_names {path} does not exist")
    readable = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            readable.setdefault(parts[0], parts[1].strip())
    missing = [name for name in class_names if name not in readable]
    if missing:
        raise UsageError(f"--class_names {path} has no name for {len(missing)} of the "
                         f"{len(class_names)} classes, e.g. {missing[0]}")
    return [readable[name] for name in class_names]


def plan_shards(splits, num_shards=None, seed=0):
    """Shuffles each split (seeded) and deals it into shards, so no shard is class-ordered."""
    shards = []
    train_count = len(splits["train"])
    train_shards = num_shards or _default_shard_count(train_count, minimum=4)
    for split in SPLIT_NAMES:
        items = sorted(splits[split], key=lambda item: item.relative_path)
        if not items:
            continue
        random.Random(f"{seed}-{split}").shuffle(items)
        if split == "train":
            count = min(train_shards, len(items))
        else:
            proportional = math.ceil(train_shards * len(items) / max(train_count, 1))
            count = min(len(items), max(1, proportional))
        for index in range(count):
            shards.append(Shard(split, index, count, tuple(items[index::count])))
    return shards


def _default_shard_count(count, minimum):
    return max(minimum, math.ceil(count / EXAMPLES_PER_SHARD))


# === Per-image work (runs in worker processes: Pillow and NumPy only) ===


def _to_rgb(image, background=(255, 255, 255)):
    """Any Pillow image -> 8-bit RGB; transparency is composited on `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_and_crop(path, max_pixels=DEFAULT_MAX_PIXELS, size=STORED_SIZE):
    """Decodes an image file and returns its central size x size RGB crop (shorter side
    rescaled to `size`), as a Pillow image. Raises ValueError with the reason on bad input."""
    # Pillow refuses images above its own MAX_IMAGE_PIXELS before ours is checked: make its
    # limit ours, so that a --max_pixels above Pillow's default takes effect (one image at a
    # time per process, so the global is safe to set).
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ValueError(f"decompression bomb refused: {error}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image Pillow can identify") from None
        except OSError as error:
            raise ValueError(f"unreadable: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(
                f"decompression bomb refused: {width}x{height} pixels is more than "
                f"--max_pixels {max_pixels}"
            )
        if min(width, height) < MIN_SHORTER_SIDE:
            raise ValueError(
                f"image too small: {width}x{height} (shorter side under {MIN_SHORTER_SIDE})"
            )
        try:
            if image.format == "JPEG":
                # Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while staying >= size.
                scale = min(width, height) / size
                if scale >= 2:
                    image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"corrupt or truncated image data: {error}") from None
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    # Cropping the central square first, then resizing it, equals "shorter side to 256, then
    # central 256x256 crop", and never builds a huge intermediate for extreme aspect ratios.
    return image.resize(
        (size, size),
        resample=Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


def _pixel_moments(image):
    """Sum and sum of outer products of an RGB image's pixels, on the 0-1 scale. Computed
    on the pixels before JPEG coding, which changes the mean by far less than one level."""
    histogram = np.asarray(image.histogram(), dtype=np.float64).reshape(3, 256)
    pixel_sum = histogram @ np.arange(256.0) / 255.0
    channels = np.asarray(image, dtype=np.uint8).reshape(-1, 3).T.astype(np.int64)
    # Integer dot products: exact, and no BLAS, whose threads would fight the other workers
    # for the cores.
    pixel_outer = np.empty((3, 3))
    for row in range(3):
        for column in range(row, 3):
            product = int(np.dot(channels[row], channels[column]))
            pixel_outer[row, column] = pixel_outer[column, row] = product / 255.0**2
    return pixel_sum, pixel_outer


def process_item(task):
    """Worker entry point: (input_dir, item, settings) -> result dict, never raises."""
    input_dir, item, settings = task
    try:
        image = load_and_crop(
            os.path.join(input_dir, item.relative_path), max_pixels=settings["max_pixels"]
        )
        buffer = io.BytesIO()
        image.save(buffer, format=STORED_FORMAT, quality=settings["jpeg_quality"])
        pixel_sum, pixel_outer = _pixel_moments(image)
        return {
            "item": item,
            "encoded": buffer.getvalue(),
            "pixel_sum": pixel_sum,
            "pixel_outer": pixel_outer,
            "pixel_count": image.width * image.height,
        }
    except ValueError as error:
        return {"item": item, "error": str(error)}
    except Exception as error:  # a bad file must never stop the run
        return {"item": item, "error": f"{type(error).__name__}: {error}"}


# === Writing ===


def _example(encoded, item, class_names):
    import tensorflow as tf

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        Feature.ENCODED: bytes_feature(encoded),
        Feature.FORMAT: bytes_feature(STORED_FORMAT.encode()),
        Feature.HEIGHT: int_feature(STORED_SIZE),
        Feature.WIDTH: int_feature(STORED_SIZE),
        Feature.LABEL: int_feature(item.label),
        Feature.CLASS_TEXT: bytes_feature(class_names[item.label].encode()),
        Feature.FILENAME: bytes_feature(item.relative_path.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _write_shard(shard, results, output_dir, class_names, fingerprint):
    """Writes one shard from its results; the shard appears under its final name only once
    complete, after the summary the resume logic reads."""
    import tensorflow as tf

    output_dir = pathlib.Path(output_dir)
    summary_path = DataDir(output_dir).summaries_dir / f"{shard.name}.json"
    # An older shard of the same name goes first: were this run killed after writing the new
    # summary but before renaming the new shard, the old shard would pass for the new one.
    (output_dir / shard.name).unlink(missing_ok=True)
    summary_path.unlink(missing_ok=True)
    summary = {
        "fingerprint": fingerprint,
        "split": shard.split,
        "examples": 0,
        "class_counts": [0] * len(class_names),
        "skipped": [],
        "pixel_sum": [0.0] * 3,
        "pixel_outer": [[0.0] * 3 for _ in range(3)],
        "pixel_count": 0,
    }
    pixel_sum, pixel_outer = np.zeros(3), np.zeros((3, 3))
    with replaced_atomically(output_dir / shard.name) as temporary:
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for result in results:
                item = result["item"]
                if "error" in result:
                    summary["skipped"].append({"file": item.relative_path, "reason": result["error"]})
                    continue
                writer.write(_example(result["encoded"], item, class_names))
                summary["examples"] += 1
                summary["class_counts"][item.label] += 1
                pixel_sum += result["pixel_sum"]
                pixel_outer += result["pixel_outer"]
                summary["pixel_count"] += result["pixel_count"]
        summary["pixel_sum"] = pixel_sum.tolist()
        summary["pixel_outer"] = pixel_outer.tolist()
        # The summary lands before the shard: a shard under its final name always has one.
        write_text_atomically(summary_path, json.dumps(summary))
    return summary


def _completed_summary(shard, output_dir, fingerprint):
    """The shard's summary if it was completed by an identical earlier run, else None."""
    final = pathlib.Path(output_dir) / shard.name
    summary_path = DataDir(output_dir).summaries_dir / f"{shard.name}.json"
    if not (final.exists() and summary_path.exists()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        return None
    return summary if summary.get("fingerprint") == fingerprint else None


def _remove_stale_files(output_dir, shards):
    """Removes temporary files of killed runs and shards of a different plan."""
    expected = {shard.name for shard in shards}
    removed = []
    for path in pathlib.Path(output_dir).iterdir():
        name = path.name
        # Temporary files of killed runs are hidden copies of a shard's name (files.py).
        ours = (name.lstrip(".").startswith(tuple(f"{split}-" for split in SPLIT_NAMES))
                and ".tfrecord" in name)
        if ours and name not in expected:
            path.unlink()
            removed.append(name)
    summary_dir = DataDir(output_dir).summaries_dir
    if summary_dir.is_dir():
        for path in summary_dir.iterdir():
            if path.name.removesuffix(".json") not in expected:
                path.unlink()
    return removed


# === Statistics ===


def pixel_statistics(pixel_sum, pixel_outer, pixel_count):
    """Mean and std (0-255 scale) and the eigenpairs of the RGB covariance (0-1 scale)."""
    if pixel_count == 0:
        raise UsageError("no training image could be converted: nothing to compute")
    mean = np.asarray(pixel_sum) / pixel_count
    covariance = np.asarray(pixel_outer) / pixel_count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return {
        "rgb_mean": (mean * 255.0).tolist(),
        "rgb_std": (np.sqrt(np.diag(covariance)) * 255.0).tolist(),
        "rgb_covariance": covariance.tolist(),
        # eigenvectors[i] is the unit vector of eigenvalues[i], on pixel values scaled to
        # [0, 1] (the scale the paper's PCA noise is defined on).
        "rgb_eigenvalues": np.maximum(eigenvalues[order], 0.0).tolist(),
        "rgb_eigenvectors": eigenvectors[:, order].T.tolist(),
    }


# === The job ===


def convert(
    input_dir,
    output_dir,
    val_fraction=0.05,
    num_shards=None,
    workers=None,
    seed=0,
    jpeg_quality=95,
    max_pixels=DEFAULT_MAX_PIXELS,
    val_labels=None,
    val_label_synsets=None,
    class_names_file=None,
    num_partitions=1,
    partition_index=0,
    progress=None,
    log=lambda message: print(message, file=sys.stderr),
):
    """Converts an image folder; returns the dataset summary written to dataset.json, or
    None when this was one partition of several and others are still missing.
    `progress(total, description)` may return a tqdm-like bar."""
    if not 1 <= jpeg_quality <= 100:
        raise UsageError(f"--jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if num_partitions < 1 or not 0 <= partition_index < num_partitions:
        raise UsageError(
            f"--partition_index must be in [0, {num_partitions}), got {partition_index}"
        )
    if num_shards is not None and num_shards < 1:
        raise UsageError(f"--num_shards must be >= 1, got {num_shards}")
    workers = workers or os.cpu_count() or 1
    input_dir = pathlib.Path(input_dir).resolve()
    output_dir = pathlib.Path(output_dir)
    splits, class_names, ignored = discover(input_dir, val_fraction, seed, val_labels,
                                            val_label_synsets)
    readable_names = (read_class_names(class_names_file, class_names)
                      if class_names_file else None)
    shards = plan_shards(splits, num_shards, seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    removed = _remove_stale_files(output_dir, shards)
    if removed:
        log(f"removed {len(removed)} leftover or stale shard files from {output_dir}")

    # The input folder is part of every fingerprint: another tree of the same layout is
    # other images.
    settings = {"jpeg_quality": jpeg_quality, "max_pixels": max_pixels, "size": STORED_SIZE,
                "input_dir": str(input_dir)}
    summaries, todo = {}, []
    for shard in shards:
        fingerprint = shard.fingerprint(settings)
        summary = _completed_summary(shard, output_dir, fingerprint)
        if summary is not None:
            summaries[shard.name] = summary
        elif shard.index % num_partitions == partition_index:
            todo.append((shard, fingerprint))
    if len(summaries) and todo:
        log(f"resuming: {len(summaries)} of {len(shards)} shards already complete")

    total = sum(len(shard.items) for shard, _ in todo)
    tasks = [(str(input_dir), item, settings) for shard, _ in todo for item in shard.items]
    pool = None
    try:
        with progress_bar(progress if total else None, total, "converting") as bar:
            if workers > 1 and total > 1:
                pool = _worker_pool(workers)
                results = _results_in_order(pool, tasks, in_flight=4 * workers)
            else:
                results = map(process_item, tasks)
            for shard, fingerprint in todo:
                shard_results = []
                for _ in shard.items:
                    shard_results.append(next(results))
                    bar.update(1)
                summaries[shard.name] = _write_shard(
                    shard, shard_results, output_dir, class_names, fingerprint
                )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    missing = [shard.name for shard in shards if shard.name not in summaries]
    if missing:
        log(
            f"partition {partition_index} of {num_partitions} is complete; {len(missing)} "
            f"shards of other partitions are missing. Gather all partitions' files in one "
            f"folder and run the command without --partition_index to write dataset.json."
        )
        return None
    dataset = _dataset_summary(
        shards, summaries, class_names, ignored,
        arguments={
            "input_dir": str(input_dir),
            "val_fraction": val_fraction,
            "num_shards": num_shards,
            "seed": seed,
            "jpeg_quality": jpeg_quality,
            "max_pixels": max_pixels,
            "val_labels": str(val_labels) if val_labels else None,
            "class_names": str(class_names_file) if class_names_file else None,
        },
    )
    if readable_names is not None:
        dataset["readable_class_names"] = readable_names
    records = DataDir(output_dir)
    write_text_atomically(records.labels_file, DataDir.labels_text(class_names))
    write_text_atomically(records.dataset_file, json.dumps(dataset, indent=2))
    return dataset


def _worker_pool(workers):
    """Decoding workers. On Linux they are forked before this process runs any TensorFlow
    op (TensorFlow is imported but idle), so they start at once and use only Pillow and
    NumPy; elsewhere they are spawned and import the package themselves. A process pool
    executor, not multiprocessing.Pool: when a worker dies (killed, out of memory) it fails
    every pending result instead of waiting for it forever."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method))


def _process_chunk(tasks):
    return [process_item(task) for task in tasks]


def _results_in_order(pool, tasks, in_flight, chunk_size=32):
    """process_item's results in task order, computed by `pool`, with at most `in_flight`
    chunks of `chunk_size` tasks submitted ahead (decoded images wait in memory only that
    long). Raises WorkerDied if a worker process dies."""
    chunks = (tasks[start:start + chunk_size] for start in range(0, len(tasks), chunk_size))
    pending = collections.deque(pool.submit(_process_chunk, chunk)
                                for chunk in itertools.islice(chunks, in_flight))
    while pending:
        try:
            results = pending.popleft().result()
        except concurrent.futures.process.BrokenProcessPool:
            raise WorkerDied(
                "a decoding worker process died (killed, or out of memory?) and the conversion "
                "stopped; the finished shards are kept: run the same command again to go on, "
                "with fewer --workers if memory is short") from None
        pending.extend(pool.submit(_process_chunk, chunk) for chunk in itertools.islice(chunks, 1))
        yield from results


def _dataset_summary(shards, summaries, class_names, ignored, arguments):
    counts = {split: 0 for split in SPLIT_NAMES}
    class_counts = {split: [0] * len(class_names) for split in SPLIT_NAMES}
    shard_counts = {split: 0 for split in SPLIT_NAMES}
    skipped = []
    pixel_sum, pixel_outer, pixel_count = np.zeros(3), np.zeros((3, 3)), 0
    for shard in shards:
        summary = summaries[shard.name]
        counts[shard.split] += summary["examples"]
        shard_counts[shard.split] += 1
        class_counts[shard.split] = [
            a + b for a, b in zip(class_counts[shard.split], summary["class_counts"])
        ]
        skipped += [dict(entry, split=shard.split) for entry in summary["skipped"]]
        if shard.split == "train":
            pixel_sum += summary["pixel_sum"]
            pixel_outer += np.asarray(summary["pixel_outer"])
            pixel_count += summary["pixel_count"]
    return {
        "num_classes": len(class_names),
        "class_names": class_names,
        "image_size": STORED_SIZE,
        "num_examples": counts,
        "num_shards": shard_counts,
        "class_counts": {
            split: dict(zip(class_names, class_counts[split])) for split in SPLIT_NAMES
        },
        **pixel_statistics(pixel_sum, pixel_outer, pixel_count),
        "skipped": sorted(skipped, key=lambda entry: entry["file"]),
        "ignored_files": len(ignored),
        "arguments": arguments,
    }
