"""Applying the network to a whole collection: the rows of `predict.py` and of the Beam job.

One row per image, in the order the inputs were listed:

    {"path": ..., "labels": [...], "scores": [...], "true_label": ..., "error": null}

`labels` and `scores` are the top k classes' names and probabilities, best first (ties: the
lower class index first, as `tf.math.top_k` and the serving signatures rank them);
`true_label` is the class the input names (the image's folder when it is one of the model's
classes, as in an ImageFolder layout; a records folder's label), else null; `error` says why
an image could not be answered (its labels and scores are then empty).

A `.keras` model answers through `preprocess_for_eval` and a softmax, with the images decoded
by tf.data in parallel with the model; an export answers through its own `serving_default`
(or `features`) signature, the graph TF Serving runs, on the encoded bytes. Both give the same
rows.
"""

import csv
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import shutil

import numpy as np
import tensorflow as tf

from alexnet_keras import image_headers, input_pipeline, serving
from alexnet_keras.discovery import IMAGE_EXTENSIONS
from alexnet_keras_base.disk_full import is_disk_full, writing
from alexnet_keras_base.errors import Preempted, UsageError
from alexnet_keras_base.files import replaced_atomically
from alexnet_keras_base.layout import DataDir, ExportBase, Feature

DEFAULT_TOP_K = 5
FC7 = serving.FC7
FEATURES_SIGNATURE = serving.FEATURES
RECORD_SEPARATOR = "#"  # a record's row path: <shard path>#<the source file it was made from>
IMAGES_IN_FLIGHT = max(4, 2 * (os.cpu_count() or 1))  # decoded in parallel
BATCHES_AHEAD = 2  # decoded batches waiting for the model
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # gs://, s3://, ...


# === Rows ===


def top_k_rows(paths, probabilities, labels, top_k=DEFAULT_TOP_K, true_labels=None):
    """One answered row per path, from probabilities (batch, classes) and the class names."""
    probabilities = np.asarray(probabilities, np.float32)
    top_k = min(top_k, probabilities.shape[-1])
    # Stable: equal probabilities keep the lower class index first, as tf.math.top_k does.
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    true_labels = true_labels if true_labels is not None else [None] * len(paths)
    return [
        {
            "path": path,
            "labels": [labels[index] for index in classes],
            "scores": [float(probabilities[row, index]) for index in classes],
            "true_label": true_label,
            "error": None,
        }
        for row, (path, classes, true_label) in enumerate(zip(paths, ranked, true_labels))
    ]


def error_row(path, message, true_label=None):
    """The row of an image that could not be answered."""
    return {"path": path, "labels": [], "scores": [], "true_label": true_label, "error": message}


_NODE_SUFFIX = re.compile(r"\s*\[\[\{\{(function_)?node .*$", re.S)
_DECORATIONS = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]\s*$")
_ASSERTION = re.compile(r"^assertion failed: \[(?P<message>.*?)\](?: \[(?P<data>.*)\])?$")


def error_message(error):
    """The reason a TensorFlow error gives, in one line, the same whether an export's graph,
    the local pipeline or an eager op raised it: without the stack, TensorFlow's node names,
    `assertion failed` and its brackets."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    text = _DECORATIONS.sub("", _NODE_SUFFIX.sub("", text.strip()))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    match = _ASSERTION.match(text)
    if match:
        text = (match["message"] + (f" {match['data']}" if match["data"] else "")).strip()
    if isinstance(error, tf.errors.NotFoundError | tf.errors.PermissionDeniedError):
        text = f"cannot read the file: {text.rsplit('; ', 1)[-1]}"
    return text


# === Inputs ===


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


def list_inputs(inputs, splits=("train", "validation")):
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
    info = json.loads(_read_text(join_path(data_dir, DataDir.DATASET)))
    shards = []
    for split in splits:
        shards += sorted(tf.io.gfile.glob(join_path(data_dir, DataDir.shard_glob(split))))
    if not shards:
        raise UsageError(f"records folder {data_dir} has no shards of {', '.join(splits)}")
    counts = info.get("num_examples", {})
    examples = sum(int(counts.get(split, 0)) for split in splits)
    class_names = _read_text(join_path(data_dir, DataDir.LABELS)).splitlines()
    return Records(str(data_dir), shards, class_names, examples)


def _read_text(path):
    with tf.io.gfile.GFile(path) as handle:
        return handle.read()


# === Models ===


class KerasPredictor:
    """A Keras model: tf.data decodes the images (`preprocess_for_eval` behind the same
    header checks as an export), the model answers softmax(logits) and, when asked, fc7."""

    decodes_images = True

    def __init__(self, model, labels, max_pixels=serving.DEFAULT_MAX_PIXELS, features=False):
        import keras

        self.model = model
        self.labels = list(labels)
        self.max_pixels = int(max_pixels)
        self.features = features
        outputs = [model.output, model.get_layer(FC7).output] if features else [model.output]
        network = keras.Model(model.inputs, outputs)
        self.fc7_width = outputs[1].shape[-1] if features else None

        def answer(images):
            outputs = network(images, training=False)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
            probabilities = tf.nn.softmax(tf.cast(outputs[0], tf.float32))
            return probabilities, *[tf.cast(fc7, tf.float32) for fc7 in outputs[1:]]

        self._answer = tf.function(answer, reduce_retracing=True)
        self._preprocess_one = tf.function(self.preprocess)

    def preprocess(self, image_bytes):
        """Encoded image -> float32 (227, 227, 3), or InvalidArgument (the export's checks)."""
        return input_pipeline.preprocess_for_eval(
            image_headers.checked_image_bytes(image_bytes, self.max_pixels)
        )

    def answer(self, images):
        """float32 pixels (batch, 227, 227, 3) -> (probabilities, fc7 or None), numpy."""
        outputs = [output.numpy() for output in self._answer(images)]
        return outputs[0], outputs[1] if self.features else None

    def answer_one(self, image_bytes):
        """One image's (probabilities, fc7 or None), or raises its TensorFlow error."""
        return self.answer(self._preprocess_one(tf.constant(image_bytes))[tf.newaxis])


class ExportPredictor:
    """An export: its `serving_default` signature (`features` when fc7 is asked for), the
    graph TF Serving runs, on the encoded bytes; the labels are its own."""

    decodes_images = False

    def __init__(self, export_dir, features=False):
        self.path = pathlib.Path(export_dir)
        self.features = features
        self._loaded = tf.saved_model.load(str(export_dir))
        name = FEATURES_SIGNATURE if features else serving.SERVING_DEFAULT
        if name not in self._loaded.signatures:
            raise UsageError(
                f"{export_dir} has no {name} signature: export the model again "
                f"with export/export_model.py"
            )
        self._signature = self._loaded.signatures[name]
        # Through tf.io.gfile: a Beam worker loads the export from gs://... as well.
        self.labels = _read_text(
            join_path(str(export_dir), f"assets/{ExportBase.LABELS_ASSET}")
        ).splitlines()
        self.fc7_width = self._signature.structured_outputs[FC7].shape[-1] if features else None

    def answer(self, image_bytes):
        """Encoded images -> (probabilities, fc7 or None); one bad image fails the batch
        with InvalidArgument, as in TF Serving."""
        outputs = self._signature(**{serving.IMAGE_BYTES: tf.constant(image_bytes, tf.string)})
        fc7 = outputs[FC7].numpy() if self.features else None
        return outputs["probabilities"].numpy(), fc7

    def answer_one(self, image_bytes):
        return self.answer([image_bytes])


def load_predictor(
    model_path, labels_path=None, max_pixels=serving.DEFAULT_MAX_PIXELS, features=False, best=False
):
    """A `.keras` file, a run folder, an export version or base -> a predictor."""
    import keras

    import alexnet_keras  # noqa: F401  (registers the custom layers)
    from alexnet_keras.evaluation import resolve_model_path

    path = resolve_model_path(model_path, best)
    if path.is_dir():
        if labels_path:
            raise UsageError(
                "--labels is for a .keras model: an export answers with its own "
                "labels (assets/labels.txt)"
            )
        return ExportPredictor(path, features)
    try:
        model = keras.models.load_model(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"cannot load {path} as a Keras model: {error}") from None
    num_classes = model.output.shape[-1]
    labels = serving.labels_for_model(path, labels_path, model=model)
    if labels is None:
        labels = [str(index) for index in range(num_classes)]
    elif len(labels) != num_classes:
        raise UsageError(f"{len(labels)} labels for {path}, which predicts {num_classes} classes")
    return KerasPredictor(model, labels, max_pixels, features)


# === The stream of images ===


def _file_elements(paths, labels):
    classes = frozenset(labels)
    true_labels = [true_label_for(path, classes) or "" for path in paths]
    return tf.data.Dataset.from_tensor_slices(
        (
            tf.constant(paths, tf.string),
            tf.constant(true_labels, tf.string),
            tf.constant(paths, tf.string),
            tf.constant([""] * len(paths), tf.string),
        )
    )


def _record_elements(records, done):
    class_names = tf.constant(records.class_names, tf.string)
    features = {
        Feature.ENCODED: tf.io.FixedLenFeature([], tf.string),
        Feature.LABEL: tf.io.FixedLenFeature([], tf.int64),
        Feature.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def element(shard, record):
        parsed = tf.io.parse_single_example(record, features)
        key = tf.strings.join([shard, RECORD_SEPARATOR, parsed[Feature.FILENAME]])
        return key, tf.gather(class_names, parsed[Feature.LABEL]), "", parsed[Feature.ENCODED]

    dataset = tf.data.Dataset.from_tensor_slices(records.shards).flat_map(
        lambda shard: tf.data.TFRecordDataset(shard).map(lambda record: (shard, record))
    )
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if done:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(sorted(done), tf.string), tf.ones(len(done), tf.int32)
            ),
            0,
        )
        dataset = dataset.filter(lambda key, *rest: tf.equal(table.lookup(key), 0))
    return dataset


def make_dataset(sources, predictor, batch_size, done=frozenset()):
    """Batches of (paths, true labels ("" when unknown), ok, payloads, failed bytes) over the
    sources in order, leaving out the paths in `done`. Payloads are float32 pixels for a
    predictor that `decodes_images`, else the encoded bytes. An image that cannot be read or
    decoded comes out with ok False (its reason is asked again in `reason`), never as an
    error that ends the stream."""
    datasets = []
    for source in sources:
        if isinstance(source, ImageFiles):
            paths = [path for path in source.paths if path not in done]
            if paths:
                datasets.append(_file_elements(paths, predictor.labels))
        else:
            datasets.append(_record_elements(source, done))
    if not datasets:
        return None
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.concatenate(other)

    size = input_pipeline.CROP_SIZE
    empty = tf.zeros((size, size, 3), tf.float32) if predictor.decodes_images else tf.constant(b"")

    def load(key, true_label, path, image_bytes):
        image_bytes = tf.cond(
            tf.strings.length(path) > 0, lambda: tf.io.read_file(path), lambda: image_bytes
        )
        payload = predictor.preprocess(image_bytes) if predictor.decodes_images else image_bytes
        return key, true_label, True, payload, tf.constant(b"")

    def failed(key, true_label, path, image_bytes):
        return key, true_label, False, empty, image_bytes

    def guarded(*element):
        # One element in, exactly one out: the loaded image, or when loading it raised, the
        # element marked as failed. tf.data has no try/except; an ignore_errors dataset of
        # one element followed by the fallback, cut to one element, is one.
        loaded = tf.data.Dataset.from_tensors(element).map(load).ignore_errors()
        return loaded.concatenate(tf.data.Dataset.from_tensors(element).map(failed)).take(1)

    # Fixed buffers, not AUTOTUNE's: memory stays the same whatever the number of files
    # (AUTOTUNE grows its buffers over a long run); enough images in flight to keep the
    # model busy.
    dataset = dataset.interleave(
        guarded,
        cycle_length=IMAGES_IN_FLIGHT,
        block_length=1,
        num_parallel_calls=IMAGES_IN_FLIGHT,
        deterministic=True,
    )
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return dataset.batch(batch_size).with_options(options).prefetch(BATCHES_AHEAD)


def reason(predictor, path, failed_bytes):
    """(probabilities, fc7) of an image the stream could not load, when it loads now;
    else (None, the reason)."""
    try:
        image_bytes = failed_bytes or tf.io.read_file(path).numpy()
        return predictor.answer_one(image_bytes), None
    except tf.errors.OpError as error:
        return None, error_message(error)


# === Answering a batch ===


def answer_batch(predictor, batch, top_k):
    """The rows of one batch of `make_dataset`, in order, and fc7 of its answered images
    ((answered, width) or None). An export that refuses the batch (one bad image fails
    all, as in TF Serving) answers its images one by one, so only the bad ones fail."""
    paths, true_labels, ok, payloads, failed_bytes = batch
    paths = [path.decode(errors="replace") for path in paths.numpy()]
    true_labels = [label.decode() or None for label in true_labels.numpy()]
    ok = ok.numpy()
    answers = [None] * len(paths)  # (probabilities, fc7 or None) or the error's message
    good = np.flatnonzero(ok)
    if good.size:
        if predictor.decodes_images:
            answers_of_good = _split(predictor.answer(tf.gather(payloads, good)))
        else:
            answers_of_good = answer_encoded(predictor, payloads.numpy()[good])
        for index, answer in zip(good, answers_of_good):
            answers[index] = answer
    for index in np.flatnonzero(~ok):
        answer, message = reason(predictor, paths[index], failed_bytes[index].numpy())
        answers[index] = _split(answer)[0] if answer is not None else message
    return answer_rows(predictor, paths, true_labels, answers, top_k)


def answer_encoded(predictor, image_bytes):
    """Encoded images -> one answer each: (probabilities, fc7 or None), or the message of
    the error that refused the image. An export that refuses the batch (one bad image fails
    all, as in TF Serving) answers its images one by one, so only the bad ones fail."""
    try:
        return _split(predictor.answer(image_bytes))
    except tf.errors.InvalidArgumentError:
        return [_answer_alone(predictor, one) for one in image_bytes]


def answer_rows(predictor, paths, true_labels, answers, top_k):
    """The rows of `answers` (as `answer_encoded` gives them), in order, and fc7 of the
    answered images ((answered, width) or None)."""
    rows, fc7 = [], []
    for path, true_label, answer in zip(paths, true_labels, answers):
        if isinstance(answer, str):
            rows.append(error_row(path, answer, true_label))
        else:
            rows += top_k_rows([path], answer[0][np.newaxis], predictor.labels, top_k, [true_label])
            if answer[1] is not None:
                fc7.append(answer[1])
    return rows, (np.stack(fc7) if fc7 else None)


def _split(outputs):
    probabilities, fc7 = outputs
    return [(row, None if fc7 is None else fc7[index]) for index, row in enumerate(probabilities)]


def _answer_alone(predictor, image_bytes):
    try:
        return _split(predictor.answer_one(image_bytes))[0]
    except tf.errors.InvalidArgumentError as error:
        return error_message(error)


# === The outputs ===


class RowsOutput:
    """OUT.jsonl or OUT.csv. Rows go to a journal beside it (`.OUT.partial`, JSON lines)
    as each batch is answered; a rerun after a kill reads it back and answers only the
    images without a row; the finished file appears under its name in one rename. A
    finished output is never overwritten unless asked."""

    FORMATS = (".jsonl", ".csv")

    def __init__(self, path, settings, overwrite=False):
        self.path = pathlib.Path(path)
        if self.path.suffix.lower() not in self.FORMATS:
            raise UsageError(f"--output {self.path} must end in .jsonl or .csv")
        if self.path.exists() and not overwrite:
            raise UsageError(
                f"{self.path} exists: a finished output is not overwritten "
                f"(remove it, choose another --output, or pass --overwrite)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal_path = journal_path(self.path)
        self.settings_path = self.path.with_name(f".{self.path.name}.partial.json")
        self._journal = open(self.journal_path, "a+b")
        try:
            fcntl.flock(self._journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._journal.close()
            raise UsageError(f"another prediction is writing {self.path} now") from None
        self.rows_done, self.answered_paths, self.resumed = self._resume(settings)

    def _resume(self, settings):
        """Reads the journal a killed run left: its complete rows stay, a row cut by the
        kill goes. -> (paths with a row, paths of the answered rows in order, resumed)."""
        previous = (
            json.loads(self.settings_path.read_text()) if self.settings_path.exists() else None
        )
        self._journal.seek(0, 2)
        if previous is not None and previous != settings and self._journal.tell():
            raise UsageError(
                f"{self.journal_path} holds the rows of an unfinished run with other settings "
                f"({_differences(previous, settings)}): rerun it as it was to finish it, or "
                f"remove {self.journal_path} to start again"
            )
        done, answered, complete = set(), [], 0  # `complete`: bytes of whole rows
        self._journal.seek(0)
        for line in self._journal:  # one row at a time: the journal may hold millions
            if not line.endswith(b"\n"):
                break  # cut by the kill
            row = json.loads(line)
            done.add(row["path"])
            if row["error"] is None:
                answered.append(row["path"])
            complete += len(line)
        self._journal.truncate(complete)
        self._journal.seek(0, 2)
        with writing(self.settings_path):
            self.settings_path.write_text(json.dumps(settings, indent=2))
        return done, answered, bool(done)

    def add(self, rows):
        with writing(self.journal_path):  # a row cut by a full disk goes, as one cut by a kill
            self._journal.write(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
            self._journal.flush()
        self.rows_done.update(row["path"] for row in rows)
        self.answered_paths += [row["path"] for row in rows if row["error"] is None]

    def rows(self):
        """Every row written so far, in order, read back from the journal."""
        self._journal.seek(0)
        for line in self._journal:
            yield json.loads(line)
        self._journal.seek(0, 2)

    def finish(self, top_k):
        """Publishes the output under its name: the journal itself for JSON lines, or the
        same rows as CSV."""
        os.fsync(self._journal.fileno())
        if self.path.suffix.lower() == ".csv":
            with replaced_atomically(self.path) as temporary:
                with open(temporary, "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(csv_header(top_k))
                    writer.writerows(csv_row(row, top_k) for row in self.rows())
                    handle.flush()
                    os.fsync(handle.fileno())
            self.journal_path.unlink()
        else:
            os.replace(self.journal_path, self.path)
        self.settings_path.unlink(missing_ok=True)
        self.close()

    def close(self):
        try:
            self._journal.close()
        except OSError as error:  # the rows a full disk kept back: a rerun answers them
            if not is_disk_full(error):
                raise


def journal_path(output):
    """The journal of the rows of `output` answered so far."""
    output = pathlib.Path(output)
    return output.with_name(f".{output.name}.partial")


def _differences(previous, settings):
    keys = sorted(
        key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key)
    )
    return ", ".join(f"{key} {previous.get(key)} then {settings.get(key)}" for key in keys)


def csv_header(top_k):
    """The CSV columns: path, true_label, error, then label_1, score_1, ... label_k, score_k."""
    return ["path", "true_label", "error"] + [
        name for rank in range(1, top_k + 1) for name in (f"label_{rank}", f"score_{rank}")
    ]


def csv_row(row, top_k):
    ranked = [value for pair in zip(row["labels"], row["scores"]) for value in pair]
    ranked += [""] * (2 * top_k - len(ranked))
    return [row["path"], row["true_label"] or "", row["error"] or ""] + ranked


FEATURES_PER_SHARD = 10_000  # 160 MB of fc7 a shard at full width
FEATURES_INDEX = "index.csv"


def features_shard_name(index):
    return f"features-{index:05d}.npy"


class FeatureShards:
    """fc7 of every answered image: `features-NNNNN.npy` (float32, FEATURES_PER_SHARD rows
    each) and `index.csv` (path, file, row). A shard is filled as raw float32 rows in a
    hidden file and becomes its `.npy` in one rename when full or at the end; a rerun
    keeps the rows of the images the journal has answered."""

    def __init__(self, folder, width, answered, overwrite=False):
        self.folder = pathlib.Path(folder)
        self.width = int(width)
        if (self.folder / FEATURES_INDEX).exists() and not overwrite:
            raise UsageError(
                f"{self.folder} holds the features of a finished run: remove it, "
                f"choose another --features_dir, or pass --overwrite"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = answered
        shard, kept = divmod(answered, FEATURES_PER_SHARD)
        for index in range(shard):
            if not (self.folder / features_shard_name(index)).exists():
                raise UsageError(
                    f"{self.folder / features_shard_name(index)} is missing: "
                    f"remove the unfinished output to start again"
                )
            self._partial(index).unlink(missing_ok=True)  # killed between rename and unlink
        partial, row_bytes = self._partial(shard), self.width * 4
        final = self.folder / features_shard_name(shard)
        if final.exists():  # published by a run killed before its journal caught up
            rows = np.load(final, mmap_mode="r")[:kept]
            partial.write_bytes(np.ascontiguousarray(rows, np.float32).tobytes())
            final.unlink()
        for later in self.folder.glob("*features-*.npy*"):  # beyond the journal's rows
            if int(re.search(r"features-(\d+)", later.name)[1]) > shard:
                later.unlink()
        if kept and (not partial.exists() or partial.stat().st_size < kept * row_bytes):
            raise UsageError(
                f"{self.folder} holds fewer features than the rows answered: "
                f"remove the unfinished output to start again"
            )
        with open(partial, "ab") as handle:
            handle.truncate(kept * row_bytes)  # rows written after the journal's last go

    def _partial(self, shard):
        return self.folder / f".{features_shard_name(shard)}.partial"

    def add(self, features):
        features = np.ascontiguousarray(features, np.float32)
        while len(features):
            shard, filled = divmod(self.rows, FEATURES_PER_SHARD)
            part = features[: FEATURES_PER_SHARD - filled]
            with writing(self._partial(shard)), open(self._partial(shard), "ab") as handle:
                handle.write(part.tobytes())
            self.rows += len(part)
            features = features[len(part) :]
            if self.rows % FEATURES_PER_SHARD == 0:
                self._publish(shard, FEATURES_PER_SHARD)

    def _publish(self, shard, rows):
        partial = self._partial(shard)
        with replaced_atomically(self.folder / features_shard_name(shard)) as temporary:
            with open(temporary, "wb") as output, open(partial, "rb") as raw:
                np.lib.format.write_array_header_1_0(
                    output,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                        "fortran_order": False,
                        "shape": (rows, self.width),
                    },
                )
                shutil.copyfileobj(raw, output, 1 << 24)
        partial.unlink()

    def finish(self, answered_paths):
        shard, filled = divmod(self.rows, FEATURES_PER_SHARD)
        if filled or self.rows == 0:
            self._publish(shard, filled)
        with replaced_atomically(self.folder / FEATURES_INDEX) as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "file", "row"])
                for row, path in enumerate(answered_paths):
                    file_index, within = divmod(row, FEATURES_PER_SHARD)
                    writer.writerow([path, features_shard_name(file_index), within])


def explanation_path(folder, path):
    """Where the heatmap of the image at `path` goes: its path under `folder`, made relative
    (no scheme, no leading /, no ..), with .png added."""
    relative = _SCHEME.sub("", path).replace(RECORD_SEPARATOR, "/")
    parts = [part for part in relative.split("/") if part not in ("", ".", "..")]
    return pathlib.Path(folder, *parts).with_name(parts[-1] + ".png")


# === The job ===


@dataclasses.dataclass
class Summary:
    rows: int = 0
    failed: int = 0
    labelled: int = 0  # answered rows with a true label
    top1_errors: int = 0
    top5_errors: int = 0
    top_k: int = DEFAULT_TOP_K

    def add(self, row):
        self.rows += 1
        if row["error"] is not None:
            self.failed += 1
        elif row["true_label"] is not None:
            self.labelled += 1
            self.top1_errors += row["labels"][0] != row["true_label"]
            self.top5_errors += row["true_label"] not in row["labels"][:5]

    @property
    def top1_error(self):
        return self.top1_errors / self.labelled if self.labelled else None

    @property
    def top5_error(self):
        # From the rows' labels: known when they hold five (or all the classes).
        return self.top5_errors / self.labelled if self.labelled and self.top_k >= 5 else None


def predict(
    sources,
    predictor,
    output,
    batch_size=64,
    top_k=DEFAULT_TOP_K,
    features_dir=None,
    explain_dir=None,
    overwrite=False,
    settings=None,
    progress=None,
    log=print,
):
    """Answers every image of `sources` into `output` (see RowsOutput), fc7 into
    `features_dir`, Grad-CAM heatmaps into `explain_dir`; resumes an unfinished run of the
    same command. -> Summary of the whole output. A SIGTERM stops it after the batch in hand
    (Preempted, 143): a rerun resumes."""
    from alexnet_keras.progress import progress_bar
    from alexnet_keras.signals import SigtermFlag

    if batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {batch_size}")
    if top_k < 1:
        raise UsageError(f"--top_k must be >= 1, got {top_k}")
    for flag, folder in (
        ("--output", output),
        ("--features_dir", features_dir),
        ("--explain", explain_dir),
    ):
        if folder is not None and is_remote(folder):
            raise UsageError(
                f"{flag} {folder}: the local command writes to a local path "
                f"(the job on Beam, --runner, writes where its runner can)"
            )
    if explain_dir is not None and not predictor.decodes_images:
        raise UsageError(
            "--explain needs a .keras model or a run folder: an export holds no gradients"
        )
    output = RowsOutput(output, settings or {}, overwrite)
    try:
        if output.resumed:
            log(f"resuming {output.path}: {len(output.rows_done)} images already have a row")
        shards = (
            FeatureShards(features_dir, predictor.fc7_width, len(output.answered_paths), overwrite)
            if features_dir is not None
            else None
        )
        explainer = None
        if explain_dir is not None:
            from alexnet_keras.gradcam import GradCam

            explainer = GradCam(predictor.model)
        total = sum(len(source) for source in sources)
        dataset = make_dataset(sources, predictor, batch_size, frozenset(output.rows_done))
        with SigtermFlag() as sigterm, progress_bar(progress, total, "predicting") as bar:
            bar.update(len(output.rows_done))
            for batch in dataset if dataset is not None else ():
                rows, fc7 = answer_batch(predictor, batch, top_k)
                if explainer is not None:
                    _explain(explainer, predictor, batch, rows, explain_dir)
                if shards is not None and fc7 is not None:
                    shards.add(fc7)  # before the rows: a rerun drops features without a row
                output.add(rows)
                bar.update(len(rows))
                if sigterm.raised:
                    raise Preempted(
                        f"SIGTERM: stopped with {len(output.rows_done)} images answered in "
                        f"{output.journal_path}; rerun the same command to answer the rest"
                    )
        summary = Summary(top_k=top_k)
        for row in output.rows():
            summary.add(row)
        if shards is not None:
            shards.finish(output.answered_paths)
        output.finish(top_k)
        return summary
    finally:
        output.close()


def _explain(explainer, predictor, batch, rows, folder):
    from alexnet_keras.gradcam import write_explanation

    _, _, ok, pixels, _ = batch
    good = np.flatnonzero(ok.numpy())
    if not good.size:
        return
    images = tf.gather(pixels, good)
    heatmaps, classes, scores = explainer.explain(images)
    for index, image, heatmap, class_index, score in zip(
        good, images.numpy(), heatmaps, classes, scores
    ):
        caption = f"{predictor.labels[class_index]} {score:.2f}"
        write_explanation(
            explanation_path(folder, rows[index]["path"]), image.astype(np.uint8), heatmap, caption
        )


def describe(summary, output):
    """The lines the command ends with."""
    lines = [
        f"{summary.rows} images: {summary.rows - summary.failed} answered, "
        f"{summary.failed} could not be answered (their rows say why) -> {output}"
    ]
    if summary.labelled:
        top5 = f", top-5 error {summary.top5_error:.4f}" if summary.top5_error is not None else ""
        lines.append(
            f"{summary.labelled} images with a known class: top-1 error "
            f"{summary.top1_error:.4f}{top5}"
        )
    return lines
