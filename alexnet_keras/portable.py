"""Files of the network for runtimes without TensorFlow: LiteRT (`.tflite`) and ONNX (`.onnx`).

    python export/export_model.py --model runs/X/alexnet.keras --output alexnet.tflite
    python export/export_model.py --model runs/X/alexnet.keras --output alexnet.onnx

Both keep the contract of the export's `predict_pixels` signature: input `images`, float32
[batch, 227, 227, 3], RGB pixels in [0, 255] (the mean is subtracted inside; the batch is
resizable); output `probabilities`, float32 [batch, classes]. The class names travel inside
the file, one per line, under the name `labels`: the flatbuffer's metadata (LiteRT) or the
model's `metadata_props` (ONNX). Caffe's LRN and the grouped convolutions stay what they are
in the graph: LiteRT's LOCAL_RESPONSE_NORMALIZATION, SPLIT, CONV_2D and CONCATENATION, ONNX's
LRN, Split, Conv and Concat.

The file is written under a temporary name and renamed when complete and checked: run by its
own runtime on two images, it must answer the Keras model's probabilities.
"""

import pathlib

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.serving import PIXELS
from alexnet_keras_base import files
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import TRAIN, VALIDATION, DataDir

LITERT_SUFFIX = ".tflite"
ONNX_SUFFIX = ".onnx"
FORMATS = {LITERT_SUFFIX: "LiteRT", ONNX_SUFFIX: "ONNX"}
QUANTIZE_WEIGHTS = "weights"  # dynamic range: int8 weights, float activations
QUANTIZE_INT8 = "int8"  # full integer, calibrated on --calibration_data
QUANTIZE_MODES = (QUANTIZE_WEIGHTS, QUANTIZE_INT8)
PROBABILITIES = "probabilities"
LABELS_KEY = "labels"  # the class names' entry in either file's metadata
# A float file must answer the Keras model's probabilities to this (absolute): the check
# after every conversion, and the tests'. Measured: about 1e-6 on the tests' small models.
FLOAT_TOLERANCE = 1e-4
CHECK_IMAGES = 2  # images of the check after each conversion


def format_of(output, quantize=None, calibration_data=None):
    """The format that `output`'s extension names ('.tflite' or '.onnx'), after the checks
    that need no model: UsageError for an unknown extension, --quantize with ONNX, int8
    without a records folder, a records folder without int8."""
    suffix = pathlib.Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"--output {output}: unknown extension {suffix or '(none)'!r}; "
            f"use {' or '.join(FORMATS)} (or --export_base for a SavedModel)"
        )
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {quantize}: choose {' or '.join(QUANTIZE_MODES)}")
    if quantize and suffix != LITERT_SUFFIX:
        raise UsageError(f"--quantize is for LiteRT files ({LITERT_SUFFIX}), not {suffix}")
    if quantize == QUANTIZE_INT8:
        if calibration_data is None:
            raise UsageError("--quantize int8 needs --calibration_data (a records folder)")
        calibration_pattern(calibration_data)
    elif calibration_data is not None:
        raise UsageError("--calibration_data is only read by --quantize int8")
    return suffix


def calibration_pattern(data_dir):
    """The shards that int8 calibration reads: the training split's, else the validation's."""
    folder = DataDir(data_dir)
    if not folder.path.is_dir():
        raise UsageError(f"--calibration_data {folder.path} is not a folder")
    for split in (TRAIN, VALIDATION):
        if tf.io.gfile.glob(folder.shard_pattern(split)):
            return folder.shard_pattern(split)
    raise UsageError(
        f"--calibration_data {folder.path} holds no TFRecord shards (a records folder "
        f"written by data/build_tfrecords.py)"
    )


def calibration_images(data_dir, count):
    """Up to `count` images of a records folder, preprocessed as for evaluation: float32
    [227, 227, 3] pixels in [0, 255], one at a time."""
    dataset = input_pipeline.make_eval_dataset(calibration_pattern(data_dir), 1).unbatch()
    return (images for images, _ in dataset.take(count).as_numpy_iterator())


def pixels_spec():
    size = input_pipeline.CROP_SIZE
    return tf.TensorSpec((None, size, size, 3), tf.float32, name=PIXELS)


def predict_pixels_function(model):
    """`predict_pixels` on the Keras model: pixels -> {"probabilities": float32}."""

    @tf.function(input_signature=[pixels_spec()])
    def predict_pixels(images):
        return {PROBABILITIES: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))}

    return predict_pixels


def labels_text(labels):
    """The class names as the files hold them: one per line."""
    for label in labels:
        if not label or "\n" in label or "\r" in label:
            raise UsageError(f"label {label!r} is empty or spans lines")
    return "".join(f"{label}\n" for label in labels)


def check_images(seed=0, count=CHECK_IMAGES):
    """Smooth random pictures, float32 [count, 227, 227, 3] in [0, 255]."""
    size = input_pipeline.CROP_SIZE
    corners = np.random.default_rng(seed).uniform(0, 255, (count, 3, 3, 3)).astype(np.float32)
    return tf.image.resize(corners, (size, size), method="bicubic").numpy().clip(0, 255)


def write_portable(
    model, output, labels, quantize=None, calibration_data=None, calibration_count=None, log=print
):
    """Converts `model` to the format of `output`'s extension and writes it atomically;
    returns a sentence that describes what was written."""
    from alexnet_keras import litert, onnx_format

    suffix = format_of(output, quantize, calibration_data)
    num_classes = model.output.shape[-1]
    if len(labels) != num_classes:
        raise UsageError(f"{len(labels)} labels for a model of {num_classes} classes")
    text = labels_text(labels)
    if suffix == LITERT_SUFFIX:
        content, notes = litert.convert(
            model, text, quantize, calibration_data, calibration_count, log
        )
        answer = litert.probabilities
    else:
        content, notes = onnx_format.convert(model, text)
        answer = onnx_format.probabilities
    images = check_images()
    expected = predict_pixels_function(model)(images)[PROBABILITIES].numpy()
    actual = answer(content, images)
    error = float(np.abs(actual - expected).max())
    if not np.isfinite(actual).all() or (not quantize and not error <= FLOAT_TOLERANCE):
        raise RuntimeError(
            f"the {FORMATS[suffix]} file answers probabilities {error:.3g} away from the "
            f"Keras model's (allowed: {FLOAT_TOLERANCE}): the conversion is wrong"
        )
    with files.replaced_atomically(output) as temporary:
        temporary.write_bytes(content)
    return (
        f"{FORMATS[suffix]}{f', quantized ({quantize})' if quantize else ''}, "
        f"{len(content) / 1e6:.1f} MB, {num_classes} classes; largest difference from the "
        f"Keras model's probabilities on {CHECK_IMAGES} images: {error:.2g}"
        + "".join(f"; {note}" for note in notes)
    )
