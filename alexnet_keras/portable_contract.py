"""The contract shared by the LiteRT and ONNX files (portable.py writes them): the input and
output of the export's `predict_pixels` signature, the class names' metadata entry, the
quantization modes and their calibration images, and the images every converted file is
checked on before it is written."""

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.serving import PIXELS
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
