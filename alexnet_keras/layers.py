"""Custom Keras layers of the AlexNet model.

Each layer is registered for serialization, so that `keras.models.load_model` (safe mode
included) reopens a saved `.keras` file as soon as `alexnet_keras` is imported.
"""

import keras
import tensorflow as tf

PACKAGE = "alexnet_keras"

# Per-channel RGB mean of the ImageNet training set, on the 0-255 scale. The model uses it
# until `MeanSubtraction.set_mean` is given the training set's own statistics.
IMAGENET_RGB_MEAN = (123.68, 116.779, 103.939)


# Local response normalization constants in TensorFlow's terms (alpha not divided by the
# window). The paper: n 5, k 2, alpha 1e-4, beta 0.75. Caffe's bvlc_alexnet: local_size 5,
# alpha 1e-4 divided by the window, beta 0.75, k 1.
LRN_PAPER = {"depth_radius": 2, "bias": 2.0, "alpha": 1e-4, "beta": 0.75}
LRN_CAFFE = {"depth_radius": 2, "bias": 1.0, "alpha": 2e-5, "beta": 0.75}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels (paper section 3.3).

    b = a / (bias + alpha * sum(a_j ** 2 over 2 * depth_radius + 1 channels)) ** beta

    The defaults are the paper's (`LRN_PAPER`): n = 5 (depth_radius 2), k = 2, alpha = 1e-4,
    beta = 0.75.
    TensorFlow does not divide alpha by the window size; Caffe's LRN layer and PyTorch's
    `LocalResponseNorm(size, alpha, beta, k)` do. To reproduce one of those, pass
    `depth_radius=(size - 1) // 2` and `alpha=alpha_there / size`: Caffe's bvlc_alexnet
    (local_size 5, alpha 1e-4, beta 0.75, k 1) is `depth_radius=2, alpha=2e-5, beta=0.75,
    bias=1.0`.

    The normalization always runs in float32, also under a mixed-precision policy: the sum of
    squares of ReLU outputs overflows float16 easily. The result is cast back to the input's
    dtype.
    """

    def __init__(
        self,
        depth_radius=LRN_PAPER["depth_radius"],
        bias=LRN_PAPER["bias"],
        alpha=LRN_PAPER["alpha"],
        beta=LRN_PAPER["beta"],
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(depth_radius) != depth_radius or depth_radius < 0:
            raise ValueError(f"depth_radius must be a non-negative integer, got {depth_radius!r}")
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        normalized = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32),
            depth_radius=self.depth_radius,
            bias=self.bias,
            alpha=self.alpha,
            beta=self.beta,
        )
        return tf.cast(normalized, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedConv2D(keras.layers.Layer):
    """2-D convolution whose channels are split into groups (the paper's two-GPU split).

    The kernel has the layout of `keras.layers.Conv2D(groups=groups)`, shape
    `(kernel_height, kernel_width, in_channels // groups, filters)`, output channels
    `[g * filters // groups, (g + 1) * filters // groups)` belonging to group g, so weights
    move between the two layers one to one.

    It is computed as split -> one `tf.nn.conv2d` per group -> concat. Keras 3's own
    `Conv2D(groups > 1)` on TensorFlow runs inside `tf.function(jit_compile=True)`: the
    SavedModel then holds functions marked `_XlaMustCompile`, which TensorFlow Serving refuses
    unless started with XLA, and on a CPU its training step is several times slower.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        groups=1,
        strides=1,
        padding="valid",
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if groups < 1 or int(groups) != groups:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")
        padding = padding.lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.groups = int(groups)
        self.strides = _pair(strides, "strides")
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError("GroupedConv2D needs a known number of input channels")
        if in_channels % self.groups:
            raise ValueError(
                f"input channels ({in_channels}) must be divisible by groups ({self.groups})"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: in_channels})

    def call(self, inputs):
        kernel = tf.cast(self.kernel, inputs.dtype)
        conv_args = dict(strides=(1, *self.strides, 1), padding=self.padding.upper())
        if self.groups == 1:
            outputs = tf.nn.conv2d(inputs, kernel, **conv_args)
        else:
            input_groups = tf.split(inputs, self.groups, axis=-1)
            kernel_groups = tf.split(kernel, self.groups, axis=-1)
            outputs = tf.concat(
                [
                    tf.nn.conv2d(group_input, group_kernel, **conv_args)
                    for group_input, group_kernel in zip(input_groups, kernel_groups)
                ],
                axis=-1,
            )
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (
            batch,
            _conv_output_length(height, self.kernel_size[0], self.strides[0], self.padding),
            _conv_output_length(width, self.kernel_size[1], self.strides[1], self.padding),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "groups": self.groups,
                "strides": self.strides,
                "padding": self.padding,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanSubtraction(keras.layers.Layer):
    """Subtracts the training set's per-channel mean from RGB pixel values in [0, 255], then
    multiplies by a fixed `scale` (1.0 in the paper, which fed raw centred pixel values).

    The mean is a non-trainable weight, so it travels with checkpoints, `.keras` files and
    SavedModels: whoever feeds the model raw pixels gets the preprocessing it was trained with.
    It computes in float32 whatever the global dtype policy, since 8-bit pixel values minus a
    mean need more precision than float16 gives near 255.
    """

    def __init__(self, initial_mean=IMAGENET_RGB_MEAN, scale=1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.initial_mean = tuple(float(value) for value in initial_mean)
        self.scale = float(scale)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels != len(self.initial_mean):
            raise ValueError(
                f"MeanSubtraction has {len(self.initial_mean)} mean values but the input "
                f"has {channels} channels"
            )
        self.mean = self.add_weight(
            name="mean",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.initial_mean),
            trainable=False,
        )

    def set_mean(self, mean):
        """Sets the per-channel mean (0-255 scale), e.g. from the dataset's statistics."""
        mean = [float(value) for value in mean]
        if len(mean) != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} mean values, got {len(mean)}")
        self.mean.assign(mean)

    def call(self, inputs):
        centred = tf.cast(inputs, tf.float32) - self.mean
        return centred if self.scale == 1.0 else centred * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config["initial_mean"] = list(self.initial_mean)
        config["scale"] = self.scale
        return config


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(item) for item in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def _conv_output_length(length, kernel, stride, padding):
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return (length - kernel) // stride + 1


@tf.custom_gradient
def _matmul_with_fast_input_gradient(inputs, kernel):
    def gradient(upstream):
        # TensorFlow's MatMul gradient computes upstream @ kernel^T as
        # matmul(upstream, kernel, transpose_b=True), which oneDNN runs 3.8x slower on a CPU
        # at fc6's shapes than the transpose of kernel @ upstream^T, a small (batch x inputs)
        # matrix (bench/dense_gradient_speed.py). The kernel's gradient is TensorFlow's.
        return (
            tf.transpose(tf.matmul(kernel, upstream, transpose_b=True)),
            tf.matmul(inputs, upstream, transpose_a=True),
        )

    return tf.matmul(inputs, kernel), gradient


@keras.saving.register_keras_serializable(package=PACKAGE)
class FullyConnected(keras.layers.Dense):
    """`keras.layers.Dense` (same weights, config and outputs) whose input gradient, when
    training, is computed in a layout TensorFlow's CPU kernels run faster: the paper
    network's training step is about 1.07x faster (bench/dense_gradient_speed.py). Inference
    and exports are Keras' Dense unchanged.

    `class_names` (optional, one per output unit) travel in the layer's config, so that a
    saved model carries the names of its classes (imported ImageNet weights do); configs
    without them load as before."""

    def __init__(self, units, class_names=None, **kwargs):
        super().__init__(units, **kwargs)
        self._class_names = None
        if class_names is not None:
            self.set_class_names(class_names)

    @property
    def class_names(self):
        """The names of the output units, or None."""
        return None if self._class_names is None else list(self._class_names)

    def set_class_names(self, class_names):
        class_names = tuple(str(name) for name in class_names)
        if len(class_names) != self.units:
            raise ValueError(f"{len(class_names)} class names for {self.units} units")
        self._class_names = class_names

    def get_config(self):
        config = super().get_config()
        if self._class_names is not None:
            config["class_names"] = list(self._class_names)
        return config

    def call(self, inputs, training=None):
        if (
            not training
            or len(inputs.shape) != 2
            or getattr(self, "lora_enabled", False)
            or getattr(self, "quantization_mode", None) is not None
        ):
            return super().call(inputs, training=training)
        # The kernel read into a tensor here, outside the custom gradient, so that its
        # gradient flows back to the variable through the read (and any autocast).
        kernel = tf.cast(tf.convert_to_tensor(self.kernel.value), inputs.dtype)
        outputs = _matmul_with_fast_input_gradient(inputs, kernel)
        if self.bias is not None:
            outputs = keras.ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
