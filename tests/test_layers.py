import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import GroupedConv2D, LocalResponseNormalization, MeanSubtraction


@contextlib.contextmanager
def global_dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def numpy_lrn(activations, size=5, k=2.0, alpha=1e-4, beta=0.75):
    """The paper's formula (section 3.3), written out channel by channel."""
    channels = activations.shape[-1]
    squares = activations.astype(np.float64) ** 2
    result = np.empty_like(activations, dtype=np.float64)
    half = size // 2
    for channel in range(channels):
        low, high = max(0, channel - half), min(channels - 1, channel + half)
        window = squares[..., low : high + 1].sum(axis=-1)
        result[..., channel] = activations[..., channel] / (k + alpha * window) ** beta
    return result


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_lrn_matches_the_paper_formula(scale):
    rng = np.random.default_rng(0)
    # ReLU outputs: non-negative, with a scale where the alpha term matters.
    activations = np.maximum(rng.normal(size=(2, 7, 7, 16)), 0).astype(np.float32) * scale
    layer = LocalResponseNormalization()
    output = keras.ops.convert_to_numpy(layer(activations))
    expected = numpy_lrn(activations)
    np.testing.assert_allclose(output, expected, rtol=2e-5, atol=1e-6)
    # The normalization does something at this scale (otherwise the test proves little).
    assert not np.allclose(output, activations / 2.0**0.75, rtol=1e-4) or scale == 1.0


def caffe_lrn(activations, local_size, alpha, beta, k):
    """Caffe's ACROSS_CHANNELS LRN as its documentation states it, written independently of
    the paper's formula: b_i = a_i / (k + alpha / local_size * sum over the window of a_j^2)^beta,
    the window centred on i, zero-padded at the edges."""
    channels = activations.shape[-1]
    pad = (local_size - 1) // 2
    padded = np.pad(activations.astype(np.float64) ** 2, [(0, 0)] * 3 + [(pad, pad)])
    window_sums = sum(padded[..., offset : offset + channels] for offset in range(local_size))
    scale = k + (alpha / local_size) * window_sums
    return activations / scale**beta


def test_lrn_caffe_mapping_divides_alpha_by_window():
    """README and the layer's docstring: Caffe's bvlc_alexnet LRN (local_size 5, alpha 1e-4,
    beta 0.75, k 1) is depth_radius=2, alpha=2e-5, beta=0.75, bias=1.0 here."""
    rng = np.random.default_rng(1)
    activations = np.abs(rng.normal(size=(1, 3, 3, 8)) * 50).astype(np.float32)
    caffe_mapped = LocalResponseNormalization(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)
    expected = caffe_lrn(activations, local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(caffe_mapped(activations)), expected, rtol=2e-5
    )
    # Caffe's alpha passed unchanged would be 5x too strong: the comparison can fail.
    unmapped = LocalResponseNormalization(depth_radius=2, bias=1.0, alpha=1e-4, beta=0.75)
    assert not np.allclose(keras.ops.convert_to_numpy(unmapped(activations)), expected, rtol=2e-5)


def numpy_lrn_input_gradient(
    activations, upstream, size=5, k=2.0, alpha=1e-4, beta=0.75, cross_channel=True
):
    """d(sum(upstream * lrn(a)))/da from the paper's formula, by hand: with
    d_j = k + alpha * sum(window of j) a^2, b_j = a_j * d_j^-beta and the windows symmetric,
    da_i = g_i * d_i^-beta - 2 * alpha * beta * a_i * sum(window of i) g_j * a_j * d_j^(-beta-1)."""
    activations = activations.astype(np.float64)
    upstream = upstream.astype(np.float64)
    channels = activations.shape[-1]
    half = size // 2

    def window_sums(values):
        padded = np.pad(values, [(0, 0)] * 3 + [(half, half)])
        return sum(padded[..., offset : offset + channels] for offset in range(size))

    denominator = k + alpha * window_sums(activations**2)
    local = upstream * denominator**-beta
    if not cross_channel:  # a wrong derivation, for the tests to show they can fail
        return local
    return local - 2 * alpha * beta * activations * window_sums(
        upstream * activations * denominator ** (-beta - 1)
    )


def lrn_input_gradient(layer, activations, upstream):
    inputs = tf.constant(activations)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
    return tape.gradient(outputs, inputs, output_gradients=tf.constant(upstream)).numpy()


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_lrn_gradient_matches_the_paper_formula(scale):
    """The training step's LRN gradient (TensorFlow's LRNGrad) against the derivative of the
    paper's formula; at scale 30 the cross-channel term is a large part of it."""
    rng = np.random.default_rng(4)
    activations = np.maximum(rng.normal(size=(2, 5, 5, 16)), 0).astype(np.float32) * scale
    upstream = rng.normal(size=activations.shape).astype(np.float32)
    ours = lrn_input_gradient(LocalResponseNormalization(), activations, upstream)
    expected = numpy_lrn_input_gradient(activations, upstream)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    # Without the cross-channel term the gradient differs: the comparison can fail.
    if scale > 1.0:
        local_only = numpy_lrn_input_gradient(activations, upstream, cross_channel=False)
        assert not np.allclose(ours, local_only, rtol=1e-4, atol=1e-6)


def test_lrn_gradient_uses_its_own_parameters():
    """A layer with Caffe's parameters has Caffe's gradient, not the paper's."""
    rng = np.random.default_rng(5)
    activations = np.abs(rng.normal(size=(1, 4, 4, 8)) * 50).astype(np.float32)
    upstream = rng.normal(size=activations.shape).astype(np.float32)
    caffe = LocalResponseNormalization(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)
    ours = lrn_input_gradient(caffe, activations, upstream)
    np.testing.assert_allclose(
        ours,
        numpy_lrn_input_gradient(activations, upstream, k=1.0, alpha=2e-5),
        rtol=1e-4,
        atol=1e-6,
    )
    assert not np.allclose(ours, numpy_lrn_input_gradient(activations, upstream), rtol=1e-3)


def test_lrn_computes_in_float32_and_returns_the_input_dtype():
    # 300^2 * 5 channels overflows float16 (max 65504) if squared in half precision.
    activations = tf.fill((1, 2, 2, 8), tf.constant(300.0, tf.float16))
    with global_dtype_policy("mixed_float16"):
        layer = LocalResponseNormalization()
    assert layer.compute_dtype == "float16"
    output = layer(activations)
    assert output.dtype == tf.float16
    assert np.all(np.isfinite(output.numpy()))
    expected = numpy_lrn(np.full((1, 2, 2, 8), 300.0, np.float32))
    np.testing.assert_allclose(output.numpy().astype(np.float32), expected, rtol=2e-3)


def test_lrn_config_round_trip():
    layer = LocalResponseNormalization(depth_radius=3, bias=1.0, alpha=2e-5, beta=0.5)
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.depth_radius, clone.bias, clone.alpha, clone.beta) == (3, 1.0, 2e-5, 0.5)


def _grouped_pair(strides, padding, in_channels=6, filters=8, kernel=3):
    grouped = GroupedConv2D(filters, kernel, groups=2, strides=strides, padding=padding)
    reference = keras.layers.Conv2D(filters, kernel, groups=2, strides=strides, padding=padding)
    shape = (2, 13, 13, in_channels)
    grouped.build(shape)
    reference.build(shape)
    rng = np.random.default_rng(2)
    kernel_value = rng.normal(size=grouped.kernel.shape).astype(np.float32)
    bias_value = rng.normal(size=(filters,)).astype(np.float32)
    grouped.set_weights([kernel_value, bias_value])
    reference.set_weights([kernel_value, bias_value])
    inputs = rng.normal(size=shape).astype(np.float32)
    return grouped, reference, inputs


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid"), (1, "valid")])
def test_grouped_conv_equals_keras_conv2d_groups(strides, padding):
    grouped, reference, inputs = _grouped_pair(strides, padding)
    assert tuple(grouped.kernel.shape) == tuple(reference.kernel.shape) == (3, 3, 3, 8)
    ours = keras.ops.convert_to_numpy(grouped(inputs))
    theirs = keras.ops.convert_to_numpy(reference(inputs))
    assert ours.shape == theirs.shape == grouped.compute_output_shape(inputs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_grouped_conv_equals_two_convolutions_over_channel_halves():
    grouped, _, inputs = _grouped_pair(1, "same")
    kernel_value, bias_value = grouped.get_weights()
    halves = []
    for group in range(2):
        conv = keras.layers.Conv2D(4, 3, padding="same")
        conv.build((None, 13, 13, 3))
        conv.set_weights(
            [
                kernel_value[..., group * 4 : (group + 1) * 4],
                bias_value[group * 4 : (group + 1) * 4],
            ]
        )
        halves.append(keras.ops.convert_to_numpy(conv(inputs[..., group * 3 : (group + 1) * 3])))
    expected = np.concatenate(halves, axis=-1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(grouped(inputs)), expected, rtol=1e-5, atol=1e-5
    )
    # Group 0's outputs do not depend on group 1's inputs.
    changed = inputs.copy()
    changed[..., 3:] += 1.0
    out_a = keras.ops.convert_to_numpy(grouped(inputs))
    out_b = keras.ops.convert_to_numpy(grouped(changed))
    np.testing.assert_allclose(out_a[..., :4], out_b[..., :4], rtol=1e-6)
    assert not np.allclose(out_a[..., 4:], out_b[..., 4:])


def test_grouped_conv_gradients_match_keras_conv2d_groups():
    grouped, reference, inputs = _grouped_pair(1, "same")
    gradients = []
    for layer in (grouped, reference):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(inputs)))
        gradients.append(tape.gradient(loss, layer.trainable_variables))
    for ours, theirs in zip(*gradients):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,input_channels,message",
    [
        (dict(filters=7, kernel_size=3, groups=2), 4, "filters \\(7\\) must be divisible"),
        (dict(filters=8, kernel_size=3, groups=2), 5, "input channels \\(5\\)"),
        (dict(filters=8, kernel_size=3, groups=0), 4, "groups must be a positive"),
        (dict(filters=8, kernel_size=3, padding="full"), 4, "padding must be"),
    ],
)
def test_grouped_conv_rejects_bad_arguments(kwargs, input_channels, message):
    with pytest.raises(ValueError, match=message):
        layer = GroupedConv2D(**kwargs)
        layer(np.zeros((1, 5, 5, input_channels), np.float32))


def test_mean_subtraction_uses_its_weight_and_stays_float32():
    layer = MeanSubtraction()
    images = np.full((1, 2, 2, 3), 200.0, np.float32)
    layer(images)
    layer.set_mean([10.0, 20.0, 30.0])
    output = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(output[0, 0, 0], [190.0, 180.0, 170.0])
    assert layer.trainable_weights == []
    with pytest.raises(ValueError, match="expected 3 mean values"):
        layer.set_mean([1.0, 2.0])
    with global_dtype_policy("mixed_float16"):
        half_layer = MeanSubtraction()
    assert half_layer.compute_dtype == "float32"


@pytest.mark.parametrize("activation", ["relu", None])
def test_fully_connected_equals_keras_dense_in_outputs_and_gradients(activation, tmp_path):
    """Training takes FullyConnected's own input gradient; its outputs and all gradients
    (inputs, kernel, bias) equal Keras' Dense with the same weights, eagerly and in a
    tf.function, and it saves and loads as itself."""
    from alexnet_keras import FullyConnected

    rng = np.random.default_rng(7)
    inputs = tf.constant(rng.normal(size=(6, 40)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(6, 24)).astype(np.float32))
    ours = FullyConnected(24, activation=activation, bias_initializer="random_normal")
    reference = keras.layers.Dense(24, activation=activation)
    ours.build(inputs.shape)
    reference.build(inputs.shape)
    reference.set_weights(ours.get_weights())

    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
        gradients = tape.gradient(
            outputs, [inputs, *layer.trainable_variables], output_gradients=upstream
        )
        return [outputs, *gradients]

    for run in (outputs_and_gradients, tf.function(outputs_and_gradients)):
        for one, two in zip(run(ours), run(reference)):
            np.testing.assert_allclose(one.numpy(), two.numpy(), rtol=1e-5, atol=1e-5)
    # The input gradient is not Keras' own by accident: a gradient with the kernel's rows
    # reversed would differ.
    wrong = tf.matmul(upstream, ours.kernel[::-1], transpose_b=True)
    assert not np.allclose(outputs_and_gradients(ours)[1].numpy(), wrong.numpy(), atol=1e-3)

    model = keras.Sequential([keras.Input((40,)), ours])
    model.save(tmp_path / "fc.keras")
    loaded = keras.models.load_model(tmp_path / "fc.keras")
    assert type(loaded.layers[0]) is FullyConnected
    np.testing.assert_allclose(loaded(inputs).numpy(), ours(inputs).numpy(), rtol=1e-6)
