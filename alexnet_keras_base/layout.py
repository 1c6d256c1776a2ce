"""The three folders the project reads and writes, each defined once.

- `DataDir`, the records folder of data/build_tfrecords.py: sharded TFRecords, `labels.txt`,
  `dataset.json`, and what data/validate_data.py adds (statistics, schema, reports).
- `RunDir`, the run folder of train.py: the models, `config.json`, `run.json`, checkpoints,
  TensorBoard logs, the history and its curves.
- `ExportBase`, the export base of export/export_model.py: one integer folder per version.

Standard library only: the commands read these before they import TensorFlow, and
data/validate_data.py runs in the validation environment, which has another TensorFlow.
"""

import dataclasses
import json
import pathlib

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import write_text_atomically

# The records hold each image's shorter side rescaled to 256 and its central 256x256 crop
# (paper section 2), JPEG-encoded.
STORED_SIZE = 256
STORED_FORMAT = "JPEG"
# The splits of a records folder, in the converter's order.
TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)


class Feature:
    """The keys of a record's tf.train.Example features."""

    ENCODED = "image/encoded"  # JPEG bytes, STORED_SIZE x STORED_SIZE
    FORMAT = "image/format"  # b"JPEG"
    HEIGHT = "image/height"
    WIDTH = "image/width"
    LABEL = "image/class/label"  # int64 in [0, classes)
    CLASS_TEXT = "image/class/text"  # the class's folder name
    FILENAME = "image/filename"  # the source file, relative to the input folder


class DataDir:
    """The records folder: `{split}-{index:05d}-of-{count:05d}.tfrecord` shards, `labels.txt`
    (one class name per line, in label order), `dataset.json` (counts, skipped files, RGB
    statistics), `_shard_summaries/` (resuming a conversion), and data validation's `stats/`,
    `schema.pbtxt` and `validation_NAME.*` reports."""

    LABELS = "labels.txt"
    DATASET = "dataset.json"
    SHARD_SUMMARIES = "_shard_summaries"
    STATS = "stats"
    SCHEMA = "schema.pbtxt"

    def __init__(self, path):
        self.path = pathlib.Path(path)

    @property
    def labels_file(self):
        return self.path / self.LABELS

    @property
    def dataset_file(self):
        return self.path / self.DATASET

    @property
    def summaries_dir(self):
        return self.path / self.SHARD_SUMMARIES

    @staticmethod
    def shard_name(split, index, count):
        return f"{split}-{index:05d}-of-{count:05d}.tfrecord"

    @staticmethod
    def shard_glob(split):
        """The file-name pattern of a split's shards."""
        return f"{split}-*.tfrecord"

    def shard_pattern(self, split):
        """The path pattern of a split's shards, for tf.io.gfile.glob or glob.glob."""
        return str(self.path / self.shard_glob(split))

    # Names relative to the folder, for data/validate_data.py, whose folder may be a gs://
    # address that pathlib would mangle (it joins them with os.path.join).
    @classmethod
    def stats_name(cls, name, suffix=".pb"):
        return f"{cls.STATS}/{name}{suffix}"

    @staticmethod
    def report_name(name, suffix=".json"):
        return f"validation_{name}{suffix}"

    def read_info(self):
        """dataset.json's contents; FileNotFoundError says how to make it."""
        if not self.dataset_file.exists():
            raise FileNotFoundError(
                f"{self.dataset_file} not found: convert an image folder "
                f"first with data/build_tfrecords.py"
            )
        return json.loads(self.dataset_file.read_text())

    def read_labels(self):
        return self.labels_file.read_text().splitlines()

    @staticmethod
    def labels_text(class_names):
        return "".join(f"{name}\n" for name in class_names)

    def checked(self, splits=SPLITS):
        """dataset.json's contents, once the folder is known to be the converter's output
        with records of every split in `splits`; else a UsageError that says what is missing
        (every command names its records folder --data_dir)."""
        name = f"--data_dir {self.path}"
        if not self.path.is_dir():
            raise UsageError(f"{name} does not exist")
        if not any(self.path.iterdir()):
            raise UsageError(
                f"{name} is empty: convert images into it with data/build_tfrecords.py"
            )
        missing = [file for file in (self.LABELS, self.DATASET) if not (self.path / file).exists()]
        if missing:
            raise UsageError(
                f"{name} has no {' or '.join(missing)}: is it the output folder of "
                f"data/build_tfrecords.py?"
            )
        info = self.read_info()
        for split in splits:
            if not info["num_examples"].get(split):
                present = ", ".join(split for split, count in info["num_examples"].items() if count)
                raise UsageError(f"{name} has no {split!r} split (it has: {present or 'none'})")
            if not any(self.path.glob(self.shard_glob(split))):
                raise UsageError(f"{name} has no {self.shard_glob(split)} files")
        if len([label for label in self.read_labels() if label]) != info["num_classes"]:
            raise UsageError(f"{self.labels_file} and {self.DATASET} disagree on the classes")
        return info


class RunDir:
    """A training run's folder (train.py --model_dir)."""

    FINAL_MODEL = "alexnet.keras"
    BEST_MODEL = "alexnet_best.keras"
    CONFIG = "config.json"  # the config the run started with
    RUN = "run.json"  # data, replicas, class names, checkpointed settings, resumes
    CHECKPOINTS = "checkpoints"
    LOGS = "logs"  # TensorBoard
    HISTORY = "history.csv"
    CURVES = "training_curves.png"

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def model_file(self, best=False):
        return self.path / (self.BEST_MODEL if best else self.FINAL_MODEL)

    @property
    def config_file(self):
        return self.path / self.CONFIG

    @property
    def run_file(self):
        return self.path / self.RUN

    @property
    def checkpoints_dir(self):
        return self.path / self.CHECKPOINTS

    @property
    def logs_dir(self):
        return self.path / self.LOGS

    @property
    def history_file(self):
        return self.path / self.HISTORY

    @property
    def curves_file(self):
        return self.path / self.CURVES

    def read_run(self):
        """run.json's contents, or None when the folder has none."""
        if not self.run_file.is_file():
            return None
        return json.loads(self.run_file.read_text())

    def data_dir(self):
        """The records folder the run trained on, as its run.json records, or None."""
        run = self.read_run()
        data_dir = run.get("data_dir") if isinstance(run, dict) else None
        return DataDir(data_dir) if data_dir else None

    # === The run's record ===

    @staticmethod
    def checkpoint_layout(config, num_classes):
        """The settings that change which variables a checkpoint holds, with the flag that
        sets each: a resume must keep them."""
        return {
            "num_classes": (num_classes, "the number of classes in --data_dir"),
            "width_multiplier": (config.width_multiplier, "--width_multiplier"),
            # float16 wraps the optimizer in a LossScaleOptimizer; bfloat16 and off do not.
            "loss_scaling": (config.mixed_precision == "float16", "--mixed_precision"),
            # SGD without momentum has no momentum slots.
            "momentum_slots": (config.momentum != 0, "momentum"),
            # The optimizer holds slots for the trained layers only. A fine-tuned run's network
            # is its source's (LRN constants included), recorded in run.json's `init_from`.
            "train_layers": (config.train_layers, "--train_layers"),
            "fine_tuned": (bool(config.init_from), "--init_from"),
        }

    def check_resume(self, config, num_classes):
        """Refuses, before anything is built, to resume a checkpoint with settings that
        would change what it holds."""
        if not self.run_file.exists() or not self.checkpoints_dir.exists():
            return
        model_dir, previous = self.path, self.read_run()
        for key, (value, flag) in self.checkpoint_layout(config, num_classes).items():
            if key not in previous or previous[key] == value:
                continue
            if key == "fine_tuned":
                source = previous.get("init_from", {}).get("path")
                raise UsageError(
                    f"--model_dir {model_dir} holds a checkpoint of a run that "
                    + (
                        f"started from --init_from {source}: resume with it"
                        if previous[key]
                        else "did not start from --init_from: resume without it"
                    )
                    + ", or use another --model_dir"
                )
            if key == "num_classes":
                raise UsageError(
                    f"--model_dir {model_dir} holds a checkpoint for {previous[key]} classes but "
                    f"the data has {num_classes}: use another --model_dir"
                )
            if key == "loss_scaling":
                before = previous.get("mixed_precision", "float16" if previous[key] else "off")
                raise UsageError(
                    f"--model_dir {model_dir} holds a checkpoint trained with --mixed_precision "
                    f"{before}, and --mixed_precision {config.mixed_precision} "
                    f"{'drops' if previous[key] else 'adds'} the loss scaling optimizer it "
                    f"checkpoints: resume with --mixed_precision {before}, or use another "
                    f"--model_dir"
                )
            raise UsageError(
                f"--model_dir {model_dir} holds a checkpoint made with {flag} {previous[key]} "
                f"but this run has {value}: resume with the same {flag}, or use another "
                f"--model_dir"
            )

    def record_run(self, config, class_names, data_dir, replicas, resumed_at_step, source=None):
        """config.json is the config the run started with; a resume keeps it and appends its
        own step, replicas and config changes to run.json's `resumes`. The class names travel
        with the run, so an export labels its outputs without the data folder. `source`: what
        a fine-tuned run started from (path, weights fingerprint, architecture)."""
        num_classes = len(class_names)
        run = {
            "num_classes": num_classes,
            "class_names": list(class_names),
            "data_dir": str(data_dir),
            "replicas": replicas,
            "width_multiplier": config.width_multiplier,
            "mixed_precision": config.mixed_precision,
            **{
                key: value
                for key, (value, _) in self.checkpoint_layout(config, num_classes).items()
            },
            **({"init_from": source} if source else {}),
            "resumes": [],
        }
        if resumed_at_step is None or not self.config_file.exists():
            write_text_atomically(self.config_file, config.to_json())
        else:
            original = json.loads(self.config_file.read_text())
            previous = self.read_run() or {}
            run = {**previous, "resumes": previous.get("resumes", [])}
            run["resumes"].append(
                {
                    "step": resumed_at_step,
                    "replicas": replicas,
                    "config_changes": {
                        name: value
                        for name, value in dataclasses.asdict(config).items()
                        if original.get(name) != value
                    },
                }
            )
        write_text_atomically(self.run_file, json.dumps(run, indent=2))


class ExportBase:
    """The export base: TF Serving serves its highest integer sub-folder and ignores other
    names (the hidden temporaries an export builds in before renaming them into place). A
    version holds `saved_model.pb`, `variables/`, `assets/labels.txt` (the class names the
    outputs are labelled with) and `assets.extra/` (warmup requests, which TF Serving reads,
    and a description of the export for people)."""

    SAVED_MODEL = "saved_model.pb"
    LABELS_ASSET = "labels.txt"
    EXTRA = "assets.extra"
    WARMUP = "tf_serving_warmup_requests"
    INFO = "alexnet_export.json"

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def versions(self):
        """The integer version numbers present, ascending."""
        if not self.path.is_dir():
            return []
        return sorted(
            int(child.name)
            for child in self.path.iterdir()
            if child.is_dir() and child.name.isdigit()
        )

    def version_dir(self, version):
        return self.path / str(version)

    @classmethod
    def is_version(cls, path):
        return (pathlib.Path(path) / cls.SAVED_MODEL).is_file()

    @classmethod
    def resolve(cls, path):
        """`path` if it is an export version, the highest version if it is an export base,
        else None."""
        if cls.is_version(path):
            return pathlib.Path(path)
        versions = cls(path).versions()
        return cls(path).version_dir(versions[-1]) if versions else None
