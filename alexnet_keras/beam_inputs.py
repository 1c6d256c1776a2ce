"""What the Beam job reads: the inputs planned as files to match and records folders to read
(`plan_inputs`), and the DoFns that turn them into `Image`s or, for a file that cannot be
read, an error row's message."""

import pathlib
from typing import NamedTuple

import tensorflow as tf

from alexnet_keras import prediction, prediction_inputs
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import DataDir, Feature
from alexnet_keras_base.quiet import beam_imported_quietly

with beam_imported_quietly():
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems


class Image(NamedTuple):
    """An image to answer: its row's path, its true label or None, its encoded bytes."""

    path: str
    true_label: str | None
    image_bytes: bytes


def read_error_message(error):
    """The local command's message for a file it cannot read (prediction.error_message of
    TensorFlow's NotFound or PermissionDenied): the system's reason after the path."""
    return f"cannot read the file: {getattr(error, 'strerror', None) or error}"


class ReadImage(beam.DoFn):
    """A matched file -> an Image, or the error row of a file that cannot be read."""

    def __init__(self, labels):
        self._classes = frozenset(labels)

    def process(self, readable_file):
        path = readable_file.metadata.path
        true_label = prediction_inputs.true_label_for(path, self._classes)
        try:
            yield Image(path, true_label, readable_file.read())
        except OSError as error:
            yield beam.pvalue.TaggedOutput(
                "unreadable", prediction.error_row(path, read_error_message(error), true_label)
            )


def is_answered_file(folder, path):
    """Whether a file under `folder` is one the local command answers: an image name, no
    hidden folder on the way."""
    relative = path[len(folder) :].lstrip("/")
    return prediction_inputs.is_image_name(path) and not any(
        part.startswith(".") for part in relative.split("/")[:-1]
    )


def record_image(class_names):
    features = tf.train.Example

    def parse(filename_and_record):
        filename, record = filename_and_record
        feature = features.FromString(record).features.feature
        source = feature[Feature.FILENAME].bytes_list.value
        source = source[0].decode(errors="replace") if source else ""
        label = feature[Feature.LABEL].int64_list.value[0]
        return Image(
            f"{filename}{prediction_inputs.RECORD_SEPARATOR}{source}",
            class_names[label],
            feature[Feature.ENCODED].bytes_list.value[0],
        )

    return parse


class Plan(NamedTuple):
    """What the launcher found: file patterns (pattern, folder or None), records folders
    (shard patterns, class names), and explicit inputs that cannot be read (error rows)."""

    patterns: list
    records: list
    unreadable: list


def plan_inputs(inputs, labels, splits):
    """The launcher's look at INPUT: as the local command, image files, folders (searched
    recursively) and records folders (recognised by their dataset.json), through Beam's
    file systems (local, gs://, s3://, ...). Only the records folders' small files are read
    here; the workers match and read the rest."""
    patterns, records, unreadable = [], [], []
    for item in map(str, inputs):
        if FileSystems.exists(prediction_inputs.join_path(item, DataDir.DATASET)):
            shard_patterns = [
                prediction_inputs.join_path(item, DataDir.shard_glob(split)) for split in splits
            ]
            if not any(result.metadata_list for result in FileSystems.match(shard_patterns)):
                raise UsageError(f"records folder {item} has no shards of {', '.join(splits)}")
            with FileSystems.open(prediction_inputs.join_path(item, DataDir.LABELS)) as handle:
                class_names = handle.read().decode().splitlines()
            records.append((shard_patterns, class_names))
        elif _is_file(item):
            patterns.append((item, None))
        elif FileSystems.match([prediction_inputs.join_path(item, "**")])[0].metadata_list:
            patterns.append((prediction_inputs.join_path(item, "**"), item))
        elif _is_local_symlink(item):  # dangling: the local command gives it an error row
            try:
                open(item, "rb").close()
            except OSError as error:
                true_label = prediction_inputs.true_label_for(item, frozenset(labels))
                unreadable.append(prediction.error_row(item, read_error_message(error), true_label))
            else:  # its target appeared since
                patterns.append((item, None))
        else:
            raise UsageError(f"input {item} does not exist or holds no files")
    return Plan(patterns, records, unreadable)


def _is_file(path):
    matched = FileSystems.match([path])[0].metadata_list
    return bool(matched) and not tf.io.gfile.isdir(path)


def _is_local_symlink(path):
    return not prediction_inputs.is_remote(path) and pathlib.Path(path).is_symlink()
