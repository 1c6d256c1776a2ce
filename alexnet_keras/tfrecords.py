"""Image folders -> sharded TFRecords, with the paper's rescale-and-crop and dataset statistics.

The input layouts and the shard plan are `discovery.py`'s. Images are decoded with Pillow in
worker processes; the parent process writes the shards, each under a temporary name renamed when complete, so a killed run never
leaves a shard that looks finished and the same command completes the job.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import pathlib
import sys

import numpy as np

from alexnet_keras.discovery import discover, plan_shards, read_class_names
from alexnet_keras.progress import progress_bar
from alexnet_keras.source_images import process_item
from alexnet_keras_base.config import CONVERTER_MAX_PIXELS as DEFAULT_MAX_PIXELS
from alexnet_keras_base.errors import UsageError, WorkerDied
from alexnet_keras_base.files import replaced_atomically, write_text_atomically
from alexnet_keras_base.layout import SPLITS, STORED_FORMAT, STORED_SIZE, DataDir, Feature

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
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
        deterministic=True  # map keys sorted: the same shard bytes in every process
    )


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
                    summary["skipped"].append(
                        {"file": item.relative_path, "reason": result["error"]}
                    )
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
        ours = (
            name.lstrip(".").startswith(tuple(f"{split}-" for split in SPLITS))
            and ".tfrecord" in name
        )
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


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """How data/build_tfrecords.py converts a folder (its flags of the same names)."""

    val_fraction: float = 0.05  # of each class, when the input has no validation folder
    num_shards: int | None = None  # training shards (default: about 1024 images each)
    workers: int | None = None  # decoding processes (default: one per core)
    seed: int = 0  # the validation split and the shard plan
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped before decoding
    val_labels: str | None = None  # labels of a flat validation folder
    val_label_synsets: str | None = None  # ILSVRC's index -> synset list, for those labels
    class_names_file: str | None = None  # readable class names
    num_partitions: int = 1  # machines sharing the conversion
    partition_index: int = 0  # which one this is

    def __post_init__(self):
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"--jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.num_partitions < 1 or not 0 <= self.partition_index < self.num_partitions:
            raise UsageError(
                f"--partition_index must be in [0, {self.num_partitions}), got "
                f"{self.partition_index}"
            )
        if self.num_shards is not None and self.num_shards < 1:
            raise UsageError(f"--num_shards must be >= 1, got {self.num_shards}")


def convert(
    input_dir,
    output_dir,
    options=ConvertOptions(),
    progress=None,
    log=lambda message: print(message, file=sys.stderr),
):
    """Converts an image folder; returns the dataset summary written to dataset.json, or
    None when this was one partition of several and others are still missing.
    `progress(total, description)` may return a tqdm-like bar."""
    workers = options.workers or os.cpu_count() or 1
    input_dir = pathlib.Path(input_dir).resolve()
    output_dir = pathlib.Path(output_dir)
    splits, class_names, ignored = discover(
        input_dir, options.val_fraction, options.seed, options.val_labels, options.val_label_synsets
    )
    readable_names = (
        read_class_names(options.class_names_file, class_names)
        if options.class_names_file
        else None
    )
    shards = plan_shards(splits, options.num_shards, options.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    removed = _remove_stale_files(output_dir, shards)
    if removed:
        log(f"removed {len(removed)} leftover or stale shard files from {output_dir}")

    # The input folder is part of every fingerprint: another tree of the same layout is
    # other images.
    settings = {
        "jpeg_quality": options.jpeg_quality,
        "max_pixels": options.max_pixels,
        "size": STORED_SIZE,
        "input_dir": str(input_dir),
    }
    summaries, todo = _completed_and_todo(shards, output_dir, settings, options)
    if len(summaries) and todo:
        log(f"resuming: {len(summaries)} of {len(shards)} shards already complete")
    summaries.update(
        _convert_shards(todo, input_dir, output_dir, class_names, settings, workers, progress)
    )

    missing = [shard.name for shard in shards if shard.name not in summaries]
    if missing:
        log(
            f"partition {options.partition_index} of {options.num_partitions} is complete; "
            f"{len(missing)} "
            f"shards of other partitions are missing. Gather all partitions' files in one "
            f"folder and run the command without --partition_index to write dataset.json."
        )
        return None
    dataset = _dataset_summary(
        shards,
        summaries,
        class_names,
        ignored,
        arguments={
            "input_dir": str(input_dir),
            "val_fraction": options.val_fraction,
            "num_shards": options.num_shards,
            "seed": options.seed,
            "jpeg_quality": options.jpeg_quality,
            "max_pixels": options.max_pixels,
            "val_labels": str(options.val_labels) if options.val_labels else None,
            "class_names": str(options.class_names_file) if options.class_names_file else None,
        },
    )
    if readable_names is not None:
        dataset["readable_class_names"] = readable_names
    records = DataDir(output_dir)
    write_text_atomically(records.labels_file, DataDir.labels_text(class_names))
    write_text_atomically(records.dataset_file, json.dumps(dataset, indent=2))
    return dataset


def _completed_and_todo(shards, output_dir, settings, options):
    """-> ({name: summary} of the shards a run finished with these settings, [(shard,
    fingerprint)] of this partition's shards still to write)."""
    summaries, todo = {}, []
    for shard in shards:
        fingerprint = shard.fingerprint(settings)
        summary = _completed_summary(shard, output_dir, fingerprint)
        if summary is not None:
            summaries[shard.name] = summary
        elif shard.index % options.num_partitions == options.partition_index:
            todo.append((shard, fingerprint))
    return summaries, todo


def _convert_shards(todo, input_dir, output_dir, class_names, settings, workers, progress):
    """Decodes the images of the shards in `todo` in worker processes and writes each shard
    as soon as its images are in; -> {name: summary} of the shards written."""
    total = sum(len(shard.items) for shard, _ in todo)
    tasks = [(str(input_dir), item, settings) for shard, _ in todo for item in shard.items]
    summaries, pool = {}, None
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
    return summaries


def _worker_pool(workers):
    """Decoding workers. On Linux they are forked before this process runs any TensorFlow
    op (TensorFlow is imported but idle), so they start at once and use only Pillow and
    NumPy; elsewhere they are spawned and import the package themselves. A process pool
    executor, not multiprocessing.Pool: when a worker dies (killed, out of memory) it fails
    every pending result instead of waiting for it forever."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method)
    )


def _process_chunk(tasks):
    return [process_item(task) for task in tasks]


def _results_in_order(pool, tasks, in_flight, chunk_size=32):
    """process_item's results in task order, computed by `pool`, with at most `in_flight`
    chunks of `chunk_size` tasks submitted ahead (decoded images wait in memory only that
    long). Raises WorkerDied if a worker process dies."""
    chunks = (tasks[start : start + chunk_size] for start in range(0, len(tasks), chunk_size))
    pending = collections.deque(
        pool.submit(_process_chunk, chunk) for chunk in itertools.islice(chunks, in_flight)
    )
    while pending:
        try:
            results = pending.popleft().result()
        except concurrent.futures.process.BrokenProcessPool:
            raise WorkerDied(
                "a decoding worker process died (killed, or out of memory?) and the conversion "
                "stopped; the finished shards are kept: run the same command again to go on, "
                "with fewer --workers if memory is short"
            ) from None
        pending.extend(pool.submit(_process_chunk, chunk) for chunk in itertools.islice(chunks, 1))
        yield from results


def _dataset_summary(shards, summaries, class_names, ignored, arguments):
    counts = {split: 0 for split in SPLITS}
    class_counts = {split: [0] * len(class_names) for split in SPLITS}
    shard_counts = {split: 0 for split in SPLITS}
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
        "class_counts": {split: dict(zip(class_names, class_counts[split])) for split in SPLITS},
        **pixel_statistics(pixel_sum, pixel_outer, pixel_count),
        "skipped": sorted(skipped, key=lambda entry: entry["file"]),
        "ignored_files": len(ignored),
        "arguments": arguments,
    }
