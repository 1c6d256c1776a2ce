"""The exported SavedModel must be servable by a TensorFlow Serving without XLA."""

import keras
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from alexnet_keras import build_alexnet


def functions_marked_xla_must_compile(export_dir):
    """Names of the graph functions and nodes with `_XlaMustCompile = true`."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    marked = []
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        for function in library.function:
            attr = function.attr.get("_XlaMustCompile")
            if attr is not None and attr.b:
                marked.append(function.signature.name)
            for node in function.node_def:
                node_attr = node.attr.get("_XlaMustCompile")
                if node_attr is not None and node_attr.b:
                    marked.append(f"{function.signature.name}/{node.name}")
        for node in meta_graph.graph_def.node:
            node_attr = node.attr.get("_XlaMustCompile")
            if node_attr is not None and node_attr.b:
                marked.append(node.name)
    return marked


def test_exported_alexnet_has_no_xla_must_compile(tmp_path):
    model = build_alexnet(num_classes=10, width_multiplier=0.125)
    model.export(tmp_path / "alexnet", verbose=False)
    assert functions_marked_xla_must_compile(tmp_path / "alexnet") == []


def test_keras_grouped_conv2d_would_be_marked(tmp_path):
    """The check above can fail: Keras' own Conv2D(groups=2) exports XLA-only functions."""
    inputs = keras.Input((13, 13, 8))
    outputs = keras.layers.Conv2D(8, 3, groups=2, padding="same")(inputs)
    keras.Model(inputs, outputs).export(tmp_path / "keras_groups", verbose=False)
    marked = functions_marked_xla_must_compile(tmp_path / "keras_groups")
    if not marked:
        pytest.fail("Keras Conv2D(groups=2) no longer exports _XlaMustCompile functions")
