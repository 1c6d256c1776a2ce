"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) for TensorFlow / Keras 3.

Importing this package registers the custom layers, so that
`keras.models.load_model("alexnet.keras")` works in safe mode, and gives what downstream apps
need: `build_alexnet`, the layers, and `preprocess_for_eval` (image bytes -> the model's
227x227 input, as evaluation and the serving signature compute it). Training code is not
imported.
"""

from alexnet_keras import input_pipeline
from alexnet_keras.input_pipeline import preprocess_for_eval, ten_crop
from alexnet_keras.layers import (
    IMAGENET_RGB_MEAN,
    FullyConnected,
    GroupedConv2D,
    LocalResponseNormalization,
    MeanSubtraction,
)
from alexnet_keras.model import build_alexnet, mean_layer

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_RGB_MEAN",
    "FullyConnected",
    "GroupedConv2D",
    "LocalResponseNormalization",
    "MeanSubtraction",
    "build_alexnet",
    "input_pipeline",
    "mean_layer",
    "preprocess_for_eval",
    "ten_crop",
]
