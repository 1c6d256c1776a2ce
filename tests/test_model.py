import json
import subprocess
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import build_alexnet, mean_layer
from alexnet_keras.layers import IMAGENET_RGB_MEAN
from small_models import small_alexnet

# PAPER.md's table: layer -> (output shape without batch, parameter count).
PAPER_TABLE = {
    "conv1": ((55, 55, 96), 34_944),
    "norm1": ((55, 55, 96), 0),
    "pool1": ((27, 27, 96), 0),
    "conv2": ((27, 27, 256), 307_456),
    "norm2": ((27, 27, 256), 0),
    "pool2": ((13, 13, 256), 0),
    "conv3": ((13, 13, 384), 885_120),
    "conv4": ((13, 13, 384), 663_936),
    "conv5": ((13, 13, 256), 442_624),
    "pool5": ((6, 6, 256), 0),
    "fc6": ((4096,), 37_752_832),
    "fc7": ((4096,), 16_781_312),
    "fc8": ((1000,), 4_097_000),
}
PAPER_PARAMETERS = 60_965_224


@pytest.fixture(scope="module")
def paper_model():
    return build_alexnet()


def trainable_count(layer):
    return sum(int(np.prod(weight.shape)) for weight in layer.trainable_weights)


def test_paper_model_layers_match_the_table(paper_model):
    for layer_name, (shape, parameters) in PAPER_TABLE.items():
        layer = paper_model.get_layer(layer_name)
        assert tuple(layer.output.shape[1:]) == shape, layer_name
        assert trainable_count(layer) == parameters, layer_name


def test_paper_model_has_60965224_trainable_parameters(paper_model):
    assert trainable_count(paper_model) == PAPER_PARAMETERS
    # The only other weight is the 3-value RGB mean of the first layer.
    non_trainable = sum(int(np.prod(w.shape)) for w in paper_model.non_trainable_weights)
    assert non_trainable == 3
    assert paper_model.count_params() == PAPER_PARAMETERS + 3


def test_groups_are_where_the_paper_puts_them(paper_model):
    groups = {
        name: paper_model.get_layer(name).groups
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5")
    }
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}


def test_paper_initialisation(paper_model):
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(paper_model.get_layer(name).get_weights()[1], 1.0)
    for name in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(paper_model.get_layer(name).get_weights()[1], 0.0)
    kernel = paper_model.get_layer("fc6").get_weights()[0]
    assert abs(kernel.std() - 0.01) < 2e-4 and abs(kernel.mean()) < 1e-4
    caffe = build_alexnet(num_classes=10, width_multiplier=0.125, bias_init=0.1)
    np.testing.assert_allclose(caffe.get_layer("conv4").get_weights()[1], 0.1)


def test_output_is_float32_logits_for_raw_pixels():
    model = build_alexnet(num_classes=10, width_multiplier=0.125)
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 227, 227, 3)).astype(np.float32)
    logits = model(images, training=False)
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    # Logits, not probabilities: rows need not sum to one.
    assert not np.allclose(np.sum(logits.numpy(), axis=1), 1.0)


def test_mean_subtraction_is_the_first_layer_and_settable():
    # Seeded, and He-initialised so a change of the input reaches the logits (the paper's
    # N(0, 0.01) weights under biases of 1 make the logits almost constant).
    model = small_alexnet(10, seed=5)
    layer = mean_layer(model)
    assert model.layers[1] is layer
    np.testing.assert_allclose(layer.get_weights()[0], IMAGENET_RGB_MEAN, rtol=1e-6)
    images = np.full((1, 227, 227, 3), 100.0, np.float32)
    before = model(images, training=False).numpy()
    layer.set_mean([100.0, 100.0, 100.0])
    # A constant image equal to the mean becomes all zeros after the first layer.
    inner = keras.Model(model.input, model.get_layer("mean_subtraction").output)
    np.testing.assert_array_equal(inner(images).numpy(), 0.0)
    assert np.abs(before - model(images, training=False).numpy()).max() > 1e-3


def test_width_multiplier_keeps_layers_and_scales_channels():
    tiny = build_alexnet(num_classes=10, width_multiplier=0.25)
    assert [layer.name for layer in tiny.layers] == [
        layer.name for layer in build_alexnet(num_classes=10).layers
    ]
    assert tiny.get_layer("conv2").output.shape[1:] == (27, 27, 64)
    assert tiny.get_layer("fc6").output.shape[1:] == (1024,)
    assert tiny.get_layer("pool5").output.shape[1:] == (6, 6, 64)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_classes=1), "num_classes must be an integer >= 2"),
        (dict(num_classes=2.5), "num_classes must be an integer >= 2"),
        (dict(image_size=224), "image_size must be an integer >= 227"),
        (dict(width_multiplier=0.3), "width_multiplier 0.3 gives conv1"),
        (dict(width_multiplier=0.0), "width_multiplier must be in"),
        (dict(dropout_rate=1.0), "dropout_rate must be in"),
        (dict(kernel_init="xavier"), "kernel_init must be one of"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_alexnet(**kwargs)


def test_keras_file_round_trip_in_a_fresh_process(tmp_path, python):
    model = build_alexnet(num_classes=10, width_multiplier=0.125)
    mean_layer(model).set_mean([101.0, 102.0, 103.0])
    path = tmp_path / "alexnet.keras"
    model.save(path)
    images = np.random.default_rng(3).uniform(0, 255, size=(3, 227, 227, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    expected = model(images, training=False).numpy()

    # The downstream app's view: nothing of the project but `import alexnet_keras`.
    script = textwrap.dedent(
        f"""
        import json, numpy as np, keras
        import alexnet_keras
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        images = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "loaded.npy")!r}, model(images, training=False).numpy())
        print(json.dumps([layer.__class__.__name__ for layer in model.layers]))
        """
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    layer_classes = json.loads(result.stdout.strip().splitlines()[-1])
    assert layer_classes.count("GroupedConv2D") == 5
    assert layer_classes.count("LocalResponseNormalization") == 2
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), expected)


def test_keras_file_without_the_package_fails_clearly(tmp_path, python):
    """Shows what `import alexnet_keras` is for: without it the custom layers are unknown."""
    model = build_alexnet(num_classes=10, width_multiplier=0.125)
    path = tmp_path / "alexnet.keras"
    model.save(path)
    script = f"import keras; keras.models.load_model({str(path)!r})"
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "GroupedConv2D" in result.stderr or "MeanSubtraction" in result.stderr
