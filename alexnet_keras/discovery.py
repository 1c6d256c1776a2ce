"""Discovery of the input layouts and the shard plan, for the converter (tfrecords.py).

Layout read (as torchvision's ImageFolder): `IN/train/<class>/...` with an optional
`IN/val/<class>/...`, or `IN/<class>/...` directly. ImageNet's flat `IN/val/*.JPEG` (all
validation images in one folder) is read with a labels file (`read_val_labels`). Class index =
position of the class name in sorted order. Each split is shuffled (seeded) and dealt into
shards, so no shard is class-ordered.
"""

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import SPLITS, DataDir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
EXAMPLES_PER_SHARD = 1024


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
                f"{item.relative_path}\0{item.label}\0{item.size}\0{item.mtime_ns}\n".encode()
            )
        return digest.hexdigest()


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
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


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
        raise UsageError(
            f"--val_labels {val_labels} labels a flat validation folder, but "
            f"{input_dir / 'val'} holds no image files directly"
        )
    if flat_val:
        if val_labels is None:
            raise UsageError(
                f"{val_dir} holds {len(flat_val)} image files directly, not in class folders: "
                f"give their labels with --val_labels (ImageNet's LOC_val_solution.csv, or a "
                f"file with one synset per line in sorted file order), or move them into "
                f"{val_dir}/<class_name>/ folders"
            )
        if _class_folders(val_dir):
            raise UsageError(
                f"{val_dir} holds both image files and class folders: use one layout or the other"
            )
        for items in per_class.values():
            splits["train"] += items
        labels = read_val_labels(
            val_labels, [p.name for p in flat_val], class_names, val_label_synsets
        )
        splits["validation"] = [
            Item.of_file(p, input_dir, label) for p, label in zip(flat_val, labels)
        ]
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
                f"--val_fraction or add {input_dir}/val/"
            )
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
            raise UsageError(
                f"{path} has no label for {len(unlabelled)} of the "
                f"{len(filenames)} validation files, e.g. {unlabelled[0]}"
            )
        synsets = [by_stem[pathlib.Path(name).stem] for name in filenames]
        where = [f"the row of {pathlib.Path(name).stem}" for name in filenames]
    else:
        if len(lines) != len(filenames):
            raise UsageError(
                f"{path} has {len(lines)} labels but the flat validation folder "
                f"has {len(filenames)} image files: one line per file, in sorted "
                f"file order"
            )
        where = [f"line {number}" for number in range(1, len(lines) + 1)]
        if all(line.isdigit() for line in lines):
            if index_synsets_path is None:
                raise UsageError(
                    f"{path} holds class indices, which are in the devkit's class order, not "
                    f"the sorted synsets: give that order with --val_label_synsets FILE (line "
                    f"k = synset of index k), or use a file of synsets / LOC_val_solution.csv"
                )
            order = read_synset_list(index_synsets_path)
            out_of_range = [line for line in lines if not 1 <= int(line) <= len(order)]
            if out_of_range:
                raise UsageError(
                    f"{path} has index {out_of_range[0]}, outside 1-{len(order)} "
                    f"of --val_label_synsets {index_synsets_path}"
                )
            synsets = [order[int(line) - 1] for line in lines]
        else:
            synsets = lines
    index_of = {name: index for index, name in enumerate(class_names)}
    for synset, place in zip(synsets, where):
        if synset not in index_of:
            raise UsageError(f"{path} {place} names class {synset!r}, which has no training folder")
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
        raise UsageError(
            f"--class_names {path} has no name for {len(missing)} of the "
            f"{len(class_names)} classes, e.g. {missing[0]}"
        )
    return [readable[name] for name in class_names]


def plan_shards(splits, num_shards=None, seed=0):
    """Shuffles each split (seeded) and deals it into shards, so no shard is class-ordered."""
    shards = []
    train_count = len(splits["train"])
    train_shards = num_shards or _default_shard_count(train_count, minimum=4)
    for split in SPLITS:
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
