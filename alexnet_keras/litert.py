"""The network as a LiteRT flatbuffer (`.tflite`): conversion, quantization, the class names
in the file's metadata, and running it with the LiteRT interpreter (`ai-edge-litert`).

Built-in operators only: no Flex (Select TF) operator, which would need TensorFlow beside the
interpreter. LiteRT's LOCAL_RESPONSE_NORMALIZATION has a float kernel only, so `int8` keeps
norm1 and norm2 in float32 between a DEQUANTIZE and a QUANTIZE; every other layer of the
network runs on int8.
"""

import re
import tempfile
import warnings

import flatbuffers
import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from alexnet_keras.portable_contract import (
    LABELS_KEY,
    PROBABILITIES,
    QUANTIZE_INT8,
    QUANTIZE_WEIGHTS,
    calibration_images,
    check_images,
    pixels_spec,
    predict_pixels_function,
)
from alexnet_keras.serving import PIXELS, PREDICT_PIXELS
from alexnet_keras_base.quiet import native_stderr_without

# int8 calibration: a few hundred images cover the range of each layer's activations.
CALIBRATION_IMAGES = 300
LRN_OPERATOR = "LOCAL_RESPONSE_NORMALIZATION"
_FILE_IDENTIFIER = b"TFL3"  # the LiteRT schema's file_identifier
# What the converter and the interpreter print on every use, to no purpose.
_CHATTER = re.compile(
    r"Ignored (output_format|drop_control_dependency)|XNNPACK delegate for CPU|fully_quantize: "
)
_OPERATOR_NAMES = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if name.isupper()
}


def convert(model, labels_text, quantize=None, calibration_data=None, count=None, log=print):
    """A Keras model -> (the .tflite bytes, notes for the log)."""
    notes = []
    with tempfile.TemporaryDirectory(prefix="alexnet-litert-") as folder:
        # Keras' own SavedModel export, which the converter reads and freezes, weights
        # included. (Converting a tf.function that reads the model's variables kept them as
        # variable operators: a file without the weights, answering NaN.)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            PREDICT_PIXELS, predict_pixels_function(model), input_signature=[pixels_spec()]
        )
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            folder, signature_keys=[PREDICT_PIXELS]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        # The converter's own metadata costs a rewrite of the whole file (4 s of 30 at the
        # paper's width); with_metadata below rewrites it once, for the class names.
        converter.exclude_conversion_metadata = True
        if quantize in (QUANTIZE_WEIGHTS, QUANTIZE_INT8):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == QUANTIZE_INT8:
            count = count or CALIBRATION_IMAGES
            images = list(calibration_images(calibration_data, count))
            log(f"calibrating on {len(images)} images of {calibration_data}")
            converter.representative_dataset = lambda: (
                {PIXELS: image[np.newaxis]} for image in images
            )
            notes.append(
                f"{LRN_OPERATOR} has no int8 kernel in LiteRT: norm1 and norm2 run in float32 "
                f"between DEQUANTIZE and QUANTIZE; the input and the output stay float32"
            )
        with warnings.catch_warnings(), native_stderr_without(_CHATTER):
            # Calibration runs the deprecated tf.lite.Interpreter inside the converter.
            warnings.filterwarnings("ignore", r"\s*Warning: tf.lite.Interpreter is deprecated")
            content = converter.convert()
    not_builtin = [name for name in operator_names(content) if name.startswith("CUSTOM")]
    if not_builtin:
        raise RuntimeError(f"the LiteRT file needs operators that are not built in: {not_builtin}")
    return with_metadata(content, LABELS_KEY, labels_text.encode()), notes


def operator_names(content):
    """The operators a .tflite file uses, by their built-in names; a custom operator (a Flex
    one: TensorFlow's) as CUSTOM:its code."""
    model = schema.Model.GetRootAs(content)
    names = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            names.add(_OPERATOR_NAMES[builtin])
    return names


def with_metadata(content, name, value):
    """The .tflite bytes with a metadata entry `name` holding the bytes `value`."""
    from tensorflow.lite.python import schema_py_generated as writable
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = writable.BufferT()
    buffer.data = np.frombuffer(value, np.uint8)
    model.buffers.append(buffer)
    entry = writable.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    # Sized for the whole file at once: grown from 1 kB, it is copied at every doubling.
    builder = flatbuffers.Builder(len(content) + len(value) + 2**20)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_labels(content):
    """The class names a .tflite file (its bytes) carries."""
    model = schema.Model.GetRootAs(content)
    entries = {
        model.Metadata(i).Name().decode(): model.Metadata(i) for i in range(model.MetadataLength())
    }
    data = model.Buffers(entries[LABELS_KEY].Buffer()).DataAsNumpy()
    return data.tobytes().decode().splitlines()


def runner(content, num_threads=None):
    """A function: float32 pixels [batch, 227, 227, 3] -> probabilities, run by the LiteRT
    interpreter (with its default XNNPACK delegate) on the .tflite bytes."""
    with native_stderr_without(_CHATTER):
        interpreter = Interpreter(model_content=content, num_threads=num_threads)
        signature = interpreter.get_signature_runner(PREDICT_PIXELS)

        def answer(images):
            return signature(**{PIXELS: np.asarray(images, np.float32)})[PROBABILITIES]

        answer(check_images(count=1))  # the delegate announces itself on the first run
    return answer


def probabilities(content, images):
    return runner(content)(images)
