"""The exported SavedModel must be servable by a TensorFlow Serving without XLA."""

import keras
import pytest

from alexnet_keras import build_alexnet
from alexnet_keras.serving import xla_must_compile_functions


def test_exported_alexnet_has_no_xla_must_compile(tmp_path):
    model = build_alexnet(num_classes=10, width_multiplier=0.125)
    model.export(tmp_path / "alexnet", verbose=False)
    assert xla_must_compile_functions(tmp_path / "alexnet") == []


def test_keras_grouped_conv2d_would_be_marked(tmp_path):
    """The check above can fail: Keras' own Conv2D(groups=2) exports XLA-only functions."""
    inputs = keras.Input((13, 13, 8))
    outputs = keras.layers.Conv2D(8, 3, groups=2, padding="same")(inputs)
    keras.Model(inputs, outputs).export(tmp_path / "keras_groups", verbose=False)
    marked = xla_must_compile_functions(tmp_path / "keras_groups")
    if not marked:
        pytest.fail("Keras Conv2D(groups=2) no longer exports _XlaMustCompile functions")
