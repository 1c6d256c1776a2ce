"""The AlexNet of Krizhevsky, Sutskever and Hinton (NIPS 2012) as a Keras functional model.

Contract: the input is a batch of RGB images, float pixel values in [0, 255], shape
(batch, image_size, image_size, 3); the output is the logits of `fc8`, float32 under any
dtype policy. Callers apply the softmax (the serving signature does).
"""

import keras

from alexnet_keras.input_pipeline import CROP_SIZE
from alexnet_keras.layers import (
    IMAGENET_RGB_MEAN,
    LRN_PAPER,
    FullyConnected,
    GroupedConv2D,
    LocalResponseNormalization,
    MeanSubtraction,
)
from alexnet_keras_base import config

# The paper's input is 227x227 (its figure says 224): input_pipeline.CROP_SIZE. Smaller
# inputs cannot reach the 6x6 map that pool5 hands to fc6.
IMAGE_SIZE = CROP_SIZE
MIN_IMAGE_SIZE = 227
GROUPS = 2  # the paper's two-GPU split of conv2, conv4 and conv5
# "zeros" builds a network that the weight import fills (it draws no random numbers).
KERNEL_INITIALIZERS = (*config.KERNEL_INITIALIZERS, "zeros")
# The paper's channels per layer (fc8's are the classes'); width_multiplier scales them.
PAPER_WIDTHS = {
    "conv1": 96,
    "conv2": 256,
    "conv3": 384,
    "conv4": 384,
    "conv5": 256,
    "fc6": 4096,
    "fc7": 4096,
}


def build_alexnet(
    num_classes=1000,
    image_size=IMAGE_SIZE,
    dropout_rate=0.5,
    width_multiplier=1.0,
    bias_init=1.0,
    kernel_init="paper",
    rgb_mean=IMAGENET_RGB_MEAN,
    input_scale=1.0,
    lrn=LRN_PAPER,
    name="alexnet",
):
    """Builds AlexNet.

    Args:
      num_classes: size of the `fc8` output.
      image_size: height and width of the input, at least 227.
      dropout_rate: dropout after fc6 and fc7 (paper: 0.5).
      width_multiplier: scales every layer's channels, for small variants that train fast
        on a CPU; 1.0 is the paper's network.
      bias_init: initial bias of conv2, conv4, conv5, fc6 and fc7. The paper uses 1.0;
        Caffe's reference model uses 0.1. The other biases start at 0.
      kernel_init: "paper" (weights ~ N(0, 0.01)), "he_normal", or "zeros" for weights that
        are set right after building (imported ones): no random numbers drawn, no memory
        for them.
      rgb_mean: initial per-channel mean subtracted by the first layer (0-255 scale).
      input_scale: factor applied after the mean subtraction. The paper feeds raw centred
        pixel values (1.0) to N(0, 0.01) weights; He-initialised variants want about 1/64,
        so that the first layer sees inputs of unit scale.
      lrn: the constants of norm1 and norm2, `LocalResponseNormalization`'s arguments:
        `LRN_PAPER` (default) or `LRN_CAFFE` (the published bvlc_alexnet weights).
      name: the model's name.
    """
    _check_arguments(num_classes, image_size, dropout_rate, kernel_init, lrn, input_scale)
    widths = layer_widths(width_multiplier)

    def conv(layer_name, filters, kernel_size, bias, strides=1, padding="same", groups=1):
        return GroupedConv2D(
            filters,
            kernel_size,
            groups=groups,
            strides=strides,
            padding=padding,
            activation="relu",
            kernel_initializer=_kernel_initializer(kernel_init),
            bias_initializer=keras.initializers.Constant(bias),
            name=layer_name,
        )

    def dense(layer_name, units, bias, activation=None, dtype=None):
        return FullyConnected(
            units,
            activation=activation,
            kernel_initializer=_kernel_initializer(kernel_init),
            bias_initializer=keras.initializers.Constant(bias),
            name=layer_name,
            dtype=dtype,
        )

    # === Functional Model ===
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = MeanSubtraction(initial_mean=rgb_mean, scale=input_scale, name="mean_subtraction")(images)
    x = conv("conv1", widths["conv1"], 11, 0.0, strides=4, padding="valid")(x)
    x = LocalResponseNormalization(**lrn, name="norm1")(x)  # (batch, 55, 55, 96)
    x = _pool("pool1")(x)  # (batch, 27, 27, 96)
    x = conv("conv2", widths["conv2"], 5, bias_init, groups=GROUPS)(x)
    x = LocalResponseNormalization(**lrn, name="norm2")(x)  # (batch, 27, 27, 256)
    x = _pool("pool2")(x)  # (batch, 13, 13, 256)
    x = conv("conv3", widths["conv3"], 3, 0.0)(x)  # (batch, 13, 13, 384)
    x = conv("conv4", widths["conv4"], 3, bias_init, groups=GROUPS)(x)
    x = conv("conv5", widths["conv5"], 3, bias_init, groups=GROUPS)(x)
    x = _pool("pool5")(x)  # (batch, 6, 6, 256)
    x = keras.layers.Flatten(name="flatten")(x)  # (batch, 9216)
    x = dense("fc6", widths["fc6"], bias_init, activation="relu")(x)
    x = keras.layers.Dropout(dropout_rate, name="dropout6")(x)
    x = dense("fc7", widths["fc7"], bias_init, activation="relu")(x)
    x = keras.layers.Dropout(dropout_rate, name="dropout7")(x)
    # Logits in float32 even under mixed precision, for a stable softmax and loss.
    logits = dense("fc8", num_classes, 0.0, dtype="float32")(x)  # (batch, num_classes)
    return keras.Model(images, logits, name=name)


def _check_arguments(num_classes, image_size, dropout_rate, kernel_init, lrn, input_scale):
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an integer >= {MIN_IMAGE_SIZE} so that pool5 is at "
            f"least 6x6, got {image_size!r}"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    if kernel_init not in KERNEL_INITIALIZERS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITIALIZERS}, got {kernel_init!r}")
    unknown = set(lrn) - set(LRN_PAPER)
    if unknown:
        raise ValueError(f"lrn takes {sorted(LRN_PAPER)}, got {sorted(unknown)}")
    if not input_scale > 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale!r}")


def _kernel_initializer(kernel_init):
    if kernel_init == "paper":
        return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)
    if kernel_init == "zeros":
        return keras.initializers.Zeros()
    return keras.initializers.HeNormal()


def _pool(layer_name):
    # Overlapping pooling: 3x3 windows, stride 2.
    return keras.layers.MaxPooling2D(pool_size=3, strides=2, name=layer_name)


def layer_widths(width_multiplier):
    """Channel counts per layer, scaled and checked against the two-way group split."""
    if not 0.0 < width_multiplier <= 4.0:
        raise ValueError(f"width_multiplier must be in (0, 4], got {width_multiplier!r}")
    widths = {}
    for layer_name, channels in PAPER_WIDTHS.items():
        scaled = channels * width_multiplier
        if scaled != int(scaled) or scaled < GROUPS or int(scaled) % GROUPS:
            raise ValueError(
                f"width_multiplier {width_multiplier} gives {layer_name} {scaled:g} "
                f"channels; every layer needs a whole, even number of channels for the "
                f"{GROUPS}-way group split (try 1.0, 0.5, 0.25 or 0.125)"
            )
        widths[layer_name] = int(scaled)
    return widths


def mean_layer(model):
    """The model's `MeanSubtraction` layer, whose weight holds the training-set mean."""
    for layer in model.layers:
        if isinstance(layer, MeanSubtraction):
            return layer
    raise ValueError(f"model {model.name!r} has no MeanSubtraction layer")
