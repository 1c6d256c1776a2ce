"""The prediction job on Apache Beam: `predict.py --runner ...`, the local command's rows from
as many workers as the runner gives it (docs/beam.md).

    inputs -> MatchFiles -> ReadMatches ----\\                     /-> rows -> WriteToText
    records folders -> ReadAllFromTFRecord --+-> RunInference ----+
                   unreadable files -> error rows --------------/ \\-> fc7 -> .npy + index.csv

RunInference batches the images (BatchElements, through the handler's batching arguments) and
hands them to `ExportModelHandler`, which loads the export once per worker process and runs
its `serving_default` (or `features`) signature on each batch; the answers become rows with
the local command's own functions (`prediction.answer_encoded`, `answer_rows`), so a bad
image is an error row with the same message, never a failed bundle.
"""

import csv
import io
import json
import logging

import tensorflow as tf

from alexnet_keras import (
    beam_outputs,
    prediction,
    prediction_inputs,
    prediction_outputs,
    predictors,
    serving,
)
from alexnet_keras.beam_inputs import (
    ReadImage,
    is_answered_file,
    plan_inputs,
    record_image,
)
from alexnet_keras_base.config import TOP_K
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import SPLITS, ExportBase
from alexnet_keras_base.quiet import beam_imported_quietly

with beam_imported_quietly():
    import apache_beam as beam
    from apache_beam.io import fileio
    from apache_beam.io.tfrecordio import ReadAllFromTFRecord
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import ModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions


class _WithoutMemoryWarning(logging.Filter):
    # Beam 2.78 imports `resource` in one try with its model manager, which needs PyTorch:
    # without PyTorch each model load warns that memory usage cannot be fetched.
    def filter(self, record):
        return "memory usage cannot be fetched" not in record.getMessage()


logging.getLogger().addFilter(_WithoutMemoryWarning())

NAMESPACE = "alexnet_predict"
ANSWERED = "images_answered"
REFUSED = "images_refused"
BATCHES = "batches"
MODELS_LOADED = "models_loaded"
COUNTERS = (ANSWERED, REFUSED, BATCHES, MODELS_LOADED)
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # OUT-00000-of-00004.jsonl, as Beam names its shards


# === The model ===


class ExportModelHandler(ModelHandler):
    """Our export in RunInference: `load_model` once per worker process (Beam shares it
    between the worker's threads and bundles), `run_inference` on each batch of `Image`s ->
    one (row, fc7 or None) per image."""

    def __init__(self, export_dir, batch_size=64, top_k=TOP_K, features=False):
        super().__init__()
        self._export_dir = str(export_dir)
        self._batch_size = int(batch_size)
        self._top_k = int(top_k)
        self._features = features

    def load_model(self):
        return predictors.ExportPredictor(self._export_dir, self._features)

    def run_inference(self, batch, model, inference_args=None):
        if not getattr(model, "counted", False):
            # Counted where a bundle's metrics are recorded (load_model runs in setup, where
            # they are not): one per model object that answered, so per process and worker.
            Metrics.counter(NAMESPACE, MODELS_LOADED).inc()
            model.counted = True
        Metrics.counter(NAMESPACE, BATCHES).inc()
        answers = prediction.answer_encoded(model, [image.image_bytes for image in batch])
        rows, fc7 = prediction.answer_rows(
            model,
            [image.path for image in batch],
            [image.true_label for image in batch],
            answers,
            self._top_k,
        )
        answered = iter(fc7 if fc7 is not None else ())
        return [
            (row, next(answered) if row["error"] is None and fc7 is not None else None)
            for row in rows
        ]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self):
        return NAMESPACE


def build(
    pipeline,
    plan,
    handler,
    labels,
    output_prefix,
    output_suffix,
    features_dir=None,
    top_k=TOP_K,
):
    """The job's transforms on `pipeline`: rows to OUT-SSSSS-of-NNNNN.SUFFIX, fc7 (when the
    handler answers it) to features_dir."""
    images, errors = [], []
    for index, (pattern, folder) in enumerate(plan.patterns):
        matched = pipeline | f"Match {index}" >> fileio.MatchFiles(pattern)
        if folder is not None:
            matched = matched | f"Images of {index}" >> beam.Filter(
                lambda metadata, folder=folder: is_answered_file(folder, metadata.path)
            )
        read = (
            matched
            | f"ReadMatches {index}" >> fileio.ReadMatches()
            | f"Read {index}"
            >> beam.ParDo(ReadImage(labels)).with_outputs("unreadable", main="images")
        )
        images.append(read.images)
        errors.append(read.unreadable)
    for index, (shard_patterns, class_names) in enumerate(plan.records):
        images.append(
            pipeline
            | f"Shards {index}" >> beam.Create(shard_patterns)
            | f"ReadRecords {index}" >> ReadAllFromTFRecord(with_filename=True)
            | f"Parse {index}" >> beam.Map(record_image(class_names))
        )
    if plan.unreadable:
        errors.append(pipeline | "Unreadable inputs" >> beam.Create(plan.unreadable))
    if not images:
        images.append(pipeline | "No images" >> beam.Create([]))

    answers = tuple(images) | "Images" >> beam.Flatten() | "RunInference" >> RunInference(handler)
    rows = (
        (answers | "Rows" >> beam.Map(lambda answer: answer[0]), *errors)
        | "All rows" >> beam.Flatten()
        | "Count" >> beam.Map(_counted)
    )
    if output_suffix.lower() == ".csv":
        lines = rows | "Format" >> beam.Map(_csv_line, top_k)
        header = ",".join(prediction_outputs.csv_header(top_k))
    else:
        lines, header = rows | "Format" >> beam.Map(json.dumps), None
    lines | beam_outputs.WRITE_ROWS >> beam.io.WriteToText(
        output_prefix,
        file_name_suffix=output_suffix,
        shard_name_template=SHARD_TEMPLATE,
        header=header,
    )
    if features_dir is not None:
        index = (
            answers
            | "Answered" >> beam.Filter(lambda answer: answer[1] is not None)
            | beam_outputs.WRITE_FEATURES
            >> beam.ParDo(beam_outputs.WriteFeatureShards(features_dir))
        )
        (
            index
            | "Index lines" >> beam.Map(_csv_text)
            | beam_outputs.WRITE_INDEX
            >> beam.io.WriteToText(
                prediction_inputs.join_path(features_dir, prediction_outputs.FEATURES_INDEX),
                shard_name_template="",
                num_shards=1,
                header="path,file,row",
            )
        )


def _counted(row):
    Metrics.counter(NAMESPACE, ANSWERED if row["error"] is None else REFUSED).inc()
    return row


def _csv_text(values):
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(values)
    return text.getvalue()


def _csv_line(row, top_k):
    return _csv_text(prediction_outputs.csv_row(row, top_k))


# === The job ===


def resolve_export(model):
    """--model on Beam: an export version folder, or a local export base (its highest
    version), whose signatures are read from saved_model.pb without loading it."""
    from tensorflow.python.saved_model import loader_impl

    model = str(model)
    if not prediction_inputs.is_remote(model):
        from alexnet_keras.evaluation import resolve_model_path

        path = resolve_model_path(model)
        if not path.is_dir():
            raise UsageError(
                f"--runner answers through an export (export/export_model.py): "
                f"{path} is a Keras model file"
            )
        model = str(path)
    try:
        saved_model = loader_impl.parse_saved_model(model)
    except OSError as error:
        raise UsageError(f"--model {model} is not an export version folder: {error}") from None
    return model, set(saved_model.meta_graphs[0].signature_def)


def run(
    beam_args,
    model,
    output,
    inputs,
    batch_size=64,
    top_k=TOP_K,
    splits=SPLITS,
    features_dir=None,
    overwrite=False,
    log=print,
):
    """Runs the job on the runner `beam_args` name and waits for it. -> {counter: value}."""
    if batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {batch_size}")
    if top_k < 1:
        raise UsageError(f"--top_k must be >= 1, got {top_k}")
    output = str(output)
    suffix = next(
        (
            suffix
            for suffix in prediction_outputs.RowsOutput.FORMATS
            if output.lower().endswith(suffix)
        ),
        None,
    )
    if suffix is None:
        raise UsageError(f"--output {output} must end in .jsonl or .csv")
    prefix, suffix = output[: -len(suffix)], output[-len(suffix) :]
    export_dir, signatures = resolve_export(model)
    signature = prediction.FEATURES_SIGNATURE if features_dir else serving.SERVING_DEFAULT
    if signature not in signatures:
        raise UsageError(
            f"{export_dir} has no {signature} signature: export the model again "
            f"with export/export_model.py"
        )
    with tf.io.gfile.GFile(
        prediction_inputs.join_path(export_dir, f"assets/{ExportBase.LABELS_ASSET}")
    ) as handle:
        labels = handle.read().splitlines()
    plan = plan_inputs(inputs, labels, splits)
    outputs = beam_outputs.JobOutputs(output, prefix, suffix, features_dir)
    earlier = outputs.earlier(overwrite)
    handler = ExportModelHandler(export_dir, batch_size, top_k, features_dir is not None)
    try:
        options = PipelineOptions(beam_args)
    except ValueError as error:
        raise UsageError(f"Beam pipeline options: {error}") from None
    pipeline = beam.Pipeline(options=options)
    build(pipeline, plan, handler, labels, prefix, suffix, features_dir, top_k)
    with outputs.disk_full_reported(earlier):
        result = pipeline.run()
        result.wait_until_finish()
    outputs.remove_replaced(earlier)
    return counters(result)


def counters(result):
    """Our counters of a finished job, as its runner reports them."""
    found = dict.fromkeys(COUNTERS, 0)
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        if counter.key.metric.name in found:
            value = counter.committed if counter.committed is not None else counter.attempted
            found[counter.key.metric.name] += value or 0
    return found


def describe(found, output):
    """The lines the job ends with."""
    return [
        f"{found[ANSWERED] + found[REFUSED]} images: {found[ANSWERED]} answered, "
        f"{found[REFUSED]} could not be answered (their rows say why) -> {output}",
        f"Beam counters ({NAMESPACE}): {ANSWERED} {found[ANSWERED]}, {REFUSED} "
        f"{found[REFUSED]}, {BATCHES} {found[BATCHES]}, {MODELS_LOADED} "
        f"{found[MODELS_LOADED]}",
    ]
