"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) for TensorFlow / Keras 3.

Importing this package registers the custom layers, so that
`keras.models.load_model("alexnet.keras")` works in safe mode.
"""

from alexnet_keras.layers import (
    IMAGENET_RGB_MEAN,
    GroupedConv2D,
    LocalResponseNormalization,
    MeanSubtraction,
)
from alexnet_keras.model import build_alexnet, mean_layer

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_RGB_MEAN",
    "GroupedConv2D",
    "LocalResponseNormalization",
    "MeanSubtraction",
    "build_alexnet",
    "mean_layer",
]
