"""What `predict.py` and the Beam job read: image files, folders of them (recursive, in
sorted order) and records folders (by their dataset.json), local or remote (through
`tf.io.gfile`); each input with the true label it names, if any."""

import dataclasses
import json
import pathlib
import re

import tensorflow as tf

from alexnet_keras.discovery import IMAGE_EXTENSIONS
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import SPLITS, DataDir

RECORD_SEPARATOR = "#"  # a record's row path: <shard path>#<the source file it was made from>
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # gs://, s3://, ...


def is_image_name(name):
    """Whether a file name is one the command answers: an image extension (as the converter
    reads), not hidden (.DS_Store and other dot files)."""
    name = name.rsplit("/", 1)[-1]
    return (
        not name.startswith(".") and pathlib.PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def true_label_for(path, classes):
    """The image's folder name when it is one of the model's `classes` (a set: called per
    file) as in `IN/<class>/x.jpg` or `IN/<split>/<class>/x.jpg`, else None."""
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    if len(parts) < 2:
        return None
    return parts[-2] if parts[-2] in classes else None


def is_remote(path):
    """Whether `path` names a file system by its scheme (gs://...) rather than a local path."""
    return bool(_SCHEME.match(str(path)))


def without_scheme(path):
    """`path` without its file system's scheme (gs://...), if it has one."""
    return _SCHEME.sub("", str(path))


@dataclasses.dataclass
class ImageFiles:
    """Image files, in the order they were listed."""

    paths: list

    def __len__(self):
        return len(self.paths)


@dataclasses.dataclass
class Records:
    """A records folder of ours (recognised by its dataset.json): the shards of `splits`."""

    data_dir: str
    shards: list
    class_names: list
    examples: int

    def __len__(self):
        return self.examples


def join_path(folder, name):
    """`folder/name` for local and gs://-style folders alike (pathlib would mangle gs://)."""
    return folder.rstrip("/") + "/" + name


def _image_files_under(folder):
    """Image files under `folder`, recursively, sorted; hidden folders skipped."""
    found = []
    for root, directories, files in tf.io.gfile.walk(folder):
        directories[:] = sorted(d.rstrip("/") for d in directories if not d.startswith("."))
        found += [join_path(root, name) for name in sorted(files) if is_image_name(name)]
    return found


def list_inputs(inputs, splits=SPLITS):
    """Image files, folders (searched recursively) and records folders (their `splits`) ->
    sources, in the order given. Local paths and any `tf.io.gfile` scheme (gs://, ...)."""
    sources = []
    for item in inputs:
        item = str(item)
        if tf.io.gfile.isdir(item):
            if tf.io.gfile.exists(join_path(item, DataDir.DATASET)):
                sources.append(_records(item, splits))
            else:
                files = _image_files_under(item)
                if not files:
                    raise UsageError(f"{item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
                sources.append(ImageFiles(files))
        elif tf.io.gfile.exists(item) or pathlib.Path(item).is_symlink():
            sources.append(ImageFiles([item]))
        else:
            raise UsageError(f"input {item} does not exist")
    return _merged(sources)


def _merged(sources):
    merged = []
    for source in sources:
        if merged and isinstance(source, ImageFiles) and isinstance(merged[-1], ImageFiles):
            merged[-1] = ImageFiles(merged[-1].paths + source.paths)
        else:
            merged.append(source)
    return merged


def _records(data_dir, splits):
    # Through tf.io.gfile rather than DataDir's pathlib paths: the folder may be gs://...
    info = json.loads(read_text(join_path(data_dir, DataDir.DATASET)))
    shards = []
    for split in splits:
        shards += sorted(tf.io.gfile.glob(join_path(data_dir, DataDir.shard_glob(split))))
    if not shards:
        raise UsageError(f"records folder {data_dir} has no shards of {', '.join(splits)}")
    counts = info.get("num_examples", {})
    examples = sum(int(counts.get(split, 0)) for split in splits)
    class_names = read_text(join_path(data_dir, DataDir.LABELS)).splitlines()
    return Records(str(data_dir), shards, class_names, examples)


def read_text(path):
    with tf.io.gfile.GFile(path) as handle:
        return handle.read()
