"""The three folders the project reads and writes, each defined once.

- `DataDir`, the records folder of data/build_tfrecords.py: sharded TFRecords, `labels.txt`,
  `dataset.json`, and what data/validate_data.py adds (statistics, schema, reports).
- `RunDir`, the run folder of train.py: the models, `config.json`, `run.json`, checkpoints,
  TensorBoard logs, the history and its curves.
- `ExportBase`, the export base of export/export_model.py: one integer folder per version.

Standard library only: the commands read these before they import TensorFlow, and
data/validate_data.py runs in the validation environment, which has another TensorFlow.
"""

import json
import pathlib

# The records hold each image's shorter side rescaled to 256 and its central 256x256 crop
# (paper section 2), JPEG-encoded.
STORED_SIZE = 256
STORED_FORMAT = "JPEG"
SPLITS = ("train", "validation", "test")


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

    def __fspath__(self):
        return str(self.path)

    @property
    def labels_file(self):
        return self.path / self.LABELS

    @property
    def dataset_file(self):
        return self.path / self.DATASET

    @property
    def schema_file(self):
        return self.path / self.SCHEMA

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
            raise FileNotFoundError(f"{self.dataset_file} not found: convert an image folder "
                                    f"first with data/build_tfrecords.py")
        return json.loads(self.dataset_file.read_text())

    def read_labels(self):
        return self.labels_file.read_text().splitlines()

    @staticmethod
    def labels_text(class_names):
        return "".join(f"{name}\n" for name in class_names)


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

    def __fspath__(self):
        return str(self.path)

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

    def __fspath__(self):
        return str(self.path)

    def versions(self):
        """The integer version numbers present, ascending."""
        if not self.path.is_dir():
            return []
        return sorted(int(child.name) for child in self.path.iterdir()
                      if child.is_dir() and child.name.isdigit())

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
