"""Export for TensorFlow Serving: signatures on image bytes and on pixels, labels inside the
SavedModel, warmup requests, and versions that appear whole or not at all.

    python export/export_model.py --model runs/X/alexnet.keras --export_base exports/alexnet

Signatures (TF Serving calls them by name):
  serving_default  image_bytes: string [batch], encoded JPEG / PNG / GIF / BMP / WebP images
  predict_pixels   images: float32 [batch, 227, 227, 3], RGB in [0, 255]
  features         image_bytes, as serving_default
  classify         inputs: string [batch], serialized tf.train.Examples (classify.py)
The first three answer probabilities [batch, classes], top_k_classes, top_k_labels,
top_k_scores [batch, min(5, classes)]; `features` also answers fc7 float32 [batch, fc7
width] (4096 at the paper's width; after its ReLU), from the same pass of the network as the
classes. `classify` answers TF Serving's Classify API: classes (the top-k labels) and scores.

A request that cannot be answered (empty bytes, bytes that are not an image, a truncated
image, an image above the pixel limit, non-finite pixels) fails with InvalidArgument, which
TF Serving returns as HTTP 400; one bad image fails the whole batch. The pixel limit is read
from the image header and checked before the decoder allocates anything; for a GIF it bounds
the pixels of all its frames, which the decoder reads before it keeps the first.
"""

import json
import os
import pathlib
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import classify, input_pipeline
from alexnet_keras.image_headers import checked_image_bytes
from alexnet_keras_base.config import SERVING_MAX_PIXELS as DEFAULT_MAX_PIXELS
from alexnet_keras_base.config import TOP_K
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import process_alive
from alexnet_keras_base.layout import DataDir, ExportBase, RunDir

SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
FEATURES = "features"
IMAGE_BYTES = "image_bytes"
PIXELS = "images"
FC7 = "fc7"  # the layer whose activations `features` answers, and the output's name
WARMUP_BATCH_SIZES = (1, 32)
# TF Serving warms only the signatures it is given records for. The two on image bytes get
# PredictRequests and `classify` ClassificationRequests of the same JPEGs (a few kB each);
# predict_pixels' would carry 0.6 MB of float pixels an image in every export.
WARMUP_SIGNATURES = (SERVING_DEFAULT, FEATURES)


# === Signatures ===


class ServingFunctions:
    """The functions behind the signatures, on a loaded Keras model."""

    def __init__(self, model, labels, max_pixels=DEFAULT_MAX_PIXELS):
        num_classes = model.output.shape[-1]
        if len(labels) != num_classes:
            raise UsageError(f"{len(labels)} labels for a model of {num_classes} classes")
        if max_pixels < 1:
            raise UsageError(f"max_pixels must be >= 1, got {max_pixels}")
        if FC7 not in {layer.name for layer in model.layers}:
            raise UsageError(
                f"the model has no layer named {FC7}, whose activations the "
                f"{FEATURES} signature answers: export a model built by "
                f"build_alexnet"
            )
        self.model = model
        # The logits and fc7 of one pass: the same layers and variables as `model`.
        self.features_model = keras.Model(model.inputs, [model.output, model.get_layer(FC7).output])
        self.max_pixels = int(max_pixels)
        self.top_k = min(TOP_K, num_classes)
        self.labels_file = _write_labels(labels)
        # Class index -> label, from an asset file: the labels travel inside the SavedModel.
        self.label_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                str(self.labels_file),
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )

    def predict_image_bytes(self, image_bytes):
        """string [batch] of encoded images -> the outputs dict."""
        return self.predict_pixels(self._decode(image_bytes))

    def predict_features(self, image_bytes):
        """string [batch] of encoded images -> the outputs dict and fc7."""
        logits, fc7 = self._network(self._decode(image_bytes), with_fc7=True)
        return {**self._answer(logits), FC7: fc7}

    def classify_examples(self, serialized):
        """string [batch] of serialized Examples -> classes and scores [batch, top-k]."""
        return classify.classification(
            self.predict_image_bytes(classify.image_bytes_of_examples(serialized))
        )

    def predict_pixels(self, images):
        """float32 [batch, 227, 227, 3] RGB pixels in [0, 255] -> the outputs dict."""
        (logits,) = self._network(images)
        return self._answer(logits)

    def _network(self, images, with_fc7=False):
        """Pixels -> [logits] (and fc7), float32, from one pass of the network."""
        images = tf.debugging.check_numerics(images, "pixel values must be finite")
        network = self.features_model if with_fc7 else self.model

        def run():
            return [
                tf.cast(output, tf.float32)
                for output in tf.nest.flatten(network(images, training=False))
            ]

        # An empty batch skips the model: oneDNN's convolution returns its input's shape for
        # an empty batch on some CPUs (AVX-512 Xeons), which breaks the next layer.
        return tf.cond(
            tf.shape(images)[0] > 0,
            run,
            lambda: [tf.zeros((0, output.shape[-1]), tf.float32) for output in network.outputs],
        )

    def _decode(self, image_bytes):
        """string [batch] -> float32 [batch, 227, 227, 3], checked, decoded, preprocessed."""
        size = input_pipeline.CROP_SIZE

        def preprocess(one_image):
            # The evaluation preprocessing itself: one code path for evaluation and serving.
            return input_pipeline.preprocess_for_eval(
                checked_image_bytes(one_image, self.max_pixels)
            )

        return tf.map_fn(
            preprocess, image_bytes, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)
        )

    def _answer(self, logits):
        """float32 logits [batch, classes] -> the outputs every signature answers."""
        probabilities = tf.nn.softmax(logits)
        scores, classes = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "top_k_classes": tf.cast(classes, tf.int32),
            "top_k_labels": self.label_table.lookup(tf.cast(classes, tf.int64)),
            "top_k_scores": scores,
        }


def _write_labels(labels):
    for label in labels:
        if not label or "\n" in label or "\r" in label:
            raise UsageError(f"label {label!r} is empty or spans lines")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="alexnet-labels-"))
    path = folder / ExportBase.LABELS_ASSET
    path.write_text("".join(f"{label}\n" for label in labels))
    return path


def build_export_archive(model, labels, max_pixels=DEFAULT_MAX_PIXELS):
    """A `keras.export.ExportArchive` with the four signatures (serving_default first, so
    it stays the default)."""
    functions = ServingFunctions(model, labels, max_pixels)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(functions.label_table)
    size = input_pipeline.CROP_SIZE
    archive.add_endpoint(
        SERVING_DEFAULT,
        functions.predict_image_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name=IMAGE_BYTES)],
    )
    archive.add_endpoint(
        PREDICT_PIXELS,
        functions.predict_pixels,
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name=PIXELS)],
    )
    archive.add_endpoint(
        FEATURES,
        functions.predict_features,
        input_signature=[tf.TensorSpec((None,), tf.string, name=IMAGE_BYTES)],
    )
    archive.add_endpoint(
        classify.CLASSIFY, functions.classify_examples, input_signature=classify.INPUT_SIGNATURE
    )
    return archive, functions


# === Warmup ===


def warmup_image(size=256, seed=0):
    """A JPEG of a smooth random picture, for warmup requests."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
    image = tf.image.resize(corners[np.newaxis], (size, size), method="bilinear")[0]
    return tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy()


def warmup_records(model_name, batch_sizes=WARMUP_BATCH_SIZES, signatures=WARMUP_SIGNATURES):
    """Serialized `PredictionLog`s asking each of `signatures` for each batch size, then the
    `classify` signature for each batch size (a ClassificationRequest)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    images = [warmup_image(seed=index) for index in range(max(batch_sizes))]
    records = []
    for signature in signatures:
        for batch_size in batch_sizes:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[IMAGE_BYTES].CopyFrom(
                tf.make_tensor_proto(images[:batch_size], dtype=tf.string)
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            records.append(log.SerializeToString())
    return records + classify.warmup_records(model_name, images, batch_sizes)


# === Export folder ===

_TEMPORARY = re.compile(r"^\.(?P<base>.+)\.tmp-(?P<pid>\d+)-")


def remove_stale_temporaries(export_base):
    """Removes temporary folders left beside `export_base` by exports that were killed."""
    base = pathlib.Path(export_base)
    removed = []
    if not base.parent.is_dir():
        return removed
    for path in base.parent.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and match["base"] == base.name and not process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def xla_must_compile_functions(export_dir):
    """Names of the functions and nodes marked `_XlaMustCompile` in a SavedModel: TF Serving
    refuses them unless it was started with XLA enabled."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pathlib.Path(export_dir) / ExportBase.SAVED_MODEL).read_bytes())

    def marked(node_or_function):
        attr = node_or_function.attr.get("_XlaMustCompile")
        return attr is not None and attr.b

    names = []
    for meta_graph in saved_model.meta_graphs:
        for function in meta_graph.graph_def.library.function:
            if marked(function):
                names.append(function.signature.name)
            names += [
                f"{function.signature.name}/{node.name}"
                for node in function.node_def
                if marked(node)
            ]
        names += [node.name for node in meta_graph.graph_def.node if marked(node)]
    return names


def export_model(
    model,
    export_base,
    labels,
    version=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    model_name=None,
    source=None,
    log=print,
):
    """Writes `export_base/<version>/`, a SavedModel for TF Serving; returns its path.

    The version is built in a hidden folder beside `export_base` and renamed into place
    when complete and checked, so a server polling `export_base` never sees half of it and
    a killed export leaves no version. `version` defaults to the highest present + 1; an
    existing version is never overwritten.
    """
    base = pathlib.Path(export_base)
    if version is not None and (int(version) != version or version < 1):
        raise UsageError(f"--version must be a positive integer, got {version}")
    if version is not None and (base / str(version)).exists():
        raise UsageError(
            f"{base / str(version)} already exists; versions are never "
            f"overwritten (omit --version to take the next one)"
        )
    base.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(base):
        log(f"removed {path}, left by an export that did not finish")
    model_name = model_name or base.name
    temporary = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{base.name}.tmp-{os.getpid()}-", dir=base.parent)
    )
    functions = None
    try:
        archive, functions = build_export_archive(model, labels, max_pixels)
        archive.write_out(str(temporary), verbose=False)
        classify.set_classify_method_name(temporary)
        marked = xla_must_compile_functions(temporary)
        if marked:
            raise UsageError(
                f"the exported graph has functions that only run under XLA ({marked[0]}, ...), "
                f"which TF Serving refuses unless started with XLA: the model uses a layer "
                f"compiled with jit_compile (e.g. keras.layers.Conv2D with groups > 1)"
            )
        extra = temporary / ExportBase.EXTRA
        extra.mkdir()
        with tf.io.TFRecordWriter(str(extra / ExportBase.WARMUP)) as writer:
            for record in warmup_records(model_name):
                writer.write(record)
        info = {
            "model": str(source) if source else None,
            "labels": len(labels),
            "max_pixels": functions.max_pixels,
            "top_k": functions.top_k,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "signatures": [SERVING_DEFAULT, PREDICT_PIXELS, FEATURES, classify.CLASSIFY],
        }
        (extra / ExportBase.INFO).write_text(json.dumps(info, indent=2))
        _fsync_tree(temporary)
        return _rename_into_place(temporary, base, version)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        if functions is not None:
            shutil.rmtree(functions.labels_file.parent, ignore_errors=True)


def _rename_into_place(temporary, base, version):
    """Renames the finished folder to the next free version (or `version`); a rename onto
    an existing, non-empty folder fails, so two concurrent exports cannot share a number."""
    while True:
        number = version if version is not None else max(ExportBase(base).versions(), default=0) + 1
        target = base / str(number)
        try:
            os.rename(temporary, target)
            return target
        except OSError:
            if version is not None or not target.exists():
                raise
            # Another export took this number meanwhile: take the next one.


def _fsync_tree(root):
    """Flushes every file to disk before the rename publishes the folder."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())


def labels_for_model(model_path, labels_path=None, num_classes=None, model=None):
    """Class names for an export: `labels_path` (one per line), else the class names (or the
    data folder's labels.txt) that its run folder's run.json records, else the names the
    model carries itself (`model`'s fc8 config: imported ImageNet weights); None when none
    is known."""
    if labels_path:
        path = pathlib.Path(labels_path)
        if not path.is_file():
            raise UsageError(f"--labels {path} does not exist")
        return _read_labels(path)
    run = RunDir(pathlib.Path(model_path).parent).read_run()
    if run:
        if run.get("class_names"):
            return list(run["class_names"])
        if run.get("data_dir"):
            path = DataDir(run["data_dir"]).labels_file
            if path.is_file():
                return _read_labels(path)
    return model_class_names(model) if model is not None else None


def model_class_names(model):
    """The class names a model carries in its output layer's config, or None."""
    return getattr(model.layers[-1], "class_names", None)


def _read_labels(path):
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
