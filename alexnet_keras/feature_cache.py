"""fc7 of the training split, the paper's Figure 4 searches, cached on disk.

Built for ImageNet scale: fc7 of the training split is computed once in batches and kept on
disk as float16 (`fc7_train.npy`, N x 4096; about 10 GB for 1.28 M images), with the identity
of the model and data that produced it, and reused while they match. Where each row's record
is (`RecordIndex`) is read from the records' labels alone.
"""

import dataclasses
import hashlib
import json
import pathlib
import shutil

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.kernel_figure import named_layer
from alexnet_keras.progress import progress_bar
from alexnet_keras.steps import weights_fingerprint
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import process_alive, replaced_atomically, write_text_atomically
from alexnet_keras_base.layout import TRAIN, DataDir

FEATURES_FILE = "fc7_train.npy"  # float16 (N, 4096), row i = training record i
FEATURES_INDEX_FILE = "fc7_train_index.npz"  # label, shard and position of each row
FEATURES_INFO_FILE = "fc7_train.json"  # written last: the cache is complete when it exists
FEATURE_LAYER = "fc7"


def feature_extractor(model):
    """A model from the images to fc7 (after its ReLU, before dropout7)."""
    import keras

    return keras.Model(model.input, named_layer(model, FEATURE_LAYER).output, name="fc7_features")


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
    labels, shard_of, position_of = _write_features(
        features_path, extractor, data_dir, files, expected, batch_size, progress
    )
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


def _write_features(features_path, extractor, data_dir, files, expected, batch_size, progress):
    """Writes fc7 of the `expected` training images of `files` (float16, central crops) to
    `features_path` atomically; -> the (labels, shards, positions) of its rows."""
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
    dimension = int(extractor.output.shape[-1])
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
    return labels, shard_of, position_of


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
