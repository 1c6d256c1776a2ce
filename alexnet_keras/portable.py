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

from alexnet_keras.portable_contract import (
    CHECK_IMAGES,
    FLOAT_TOLERANCE,
    FORMATS,
    LITERT_SUFFIX,
    PROBABILITIES,
    QUANTIZE_INT8,
    QUANTIZE_MODES,
    calibration_pattern,
    check_images,
    labels_text,
    predict_pixels_function,
)
from alexnet_keras_base import files
from alexnet_keras_base.errors import UsageError


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
