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

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline, serving
from alexnet_keras.prediction_inputs import RECORD_SEPARATOR, ImageFiles, is_remote, true_label_for
from alexnet_keras.prediction_outputs import FeatureShards, RowsOutput, explanation_path
from alexnet_keras_base.config import TOP_K
from alexnet_keras_base.errors import Preempted, UsageError
from alexnet_keras_base.layout import Feature

FC7 = serving.FC7
FEATURES_SIGNATURE = serving.FEATURES
IMAGES_IN_FLIGHT = max(4, 2 * (os.cpu_count() or 1))  # decoded in parallel
BATCHES_AHEAD = 2  # decoded batches waiting for the model


# === Rows ===


def top_k_rows(paths, probabilities, labels, top_k=TOP_K, true_labels=None):
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


# === The job ===


@dataclasses.dataclass
class Summary:
    rows: int = 0
    failed: int = 0
    labelled: int = 0  # answered rows with a true label
    top1_errors: int = 0
    top5_errors: int = 0
    top_k: int = TOP_K

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
    top_k=TOP_K,
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
