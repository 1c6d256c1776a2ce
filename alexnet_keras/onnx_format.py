"""The network as an ONNX model (`.onnx`): conversion with tf2onnx, the class names in its
`metadata_props`, and running it with ONNX Runtime.

ONNX's LRN divides alpha by the window, as Caffe does and TensorFlow does not: the layer
`LocalResponseNormalization(depth_radius=r, alpha=a)` is ONNX's `LRN(size=2r+1,
alpha=a*(2r+1))`. The conversion checks every LRN node against the Keras layer it came from.
"""

import logging
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx

from alexnet_keras.layers import LocalResponseNormalization
from alexnet_keras.portable_contract import LABELS_KEY, PROBABILITIES, pixels_spec
from alexnet_keras.serving import PIXELS

# The newest opset tf2onnx 1.17 writes (ONNX IR 8); ONNX Runtime reads newer ones too.
ONNX_OPSET = 18
LRN_ATTRIBUTES = ("size", "alpha", "beta", "bias")
_WEIGHT = "weight_"  # the weights' names while they are the graph's inputs


def convert(model, labels_text):
    """A Keras model -> (the .onnx bytes, notes for the log)."""
    onnx_model = _converted_with_weights_as_inputs(model)
    onnx_model = _optimized(onnx_model)
    expected = [
        onnx_lrn(layer) for layer in model.layers if isinstance(layer, LocalResponseNormalization)
    ]
    written = lrn_attributes(onnx_model)
    if len(written) != len(expected) or not all(
        np.allclose([w[key] for key in LRN_ATTRIBUTES], [e[key] for key in LRN_ATTRIBUTES])
        for w, e in zip(written, expected)
    ):
        raise RuntimeError(f"the ONNX LRN nodes {written} are not the model's layers {expected}")
    onnx_model.metadata_props.add(key=LABELS_KEY, value=labels_text)
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString(), []


def _converted_with_weights_as_inputs(model):
    """tf2onnx's graph of `predict_pixels`, the weights as initializers.

    tf2onnx copies every constant each time one of its optimizers rewrites the graph: with
    the weights as constants, the paper's network took 124 s to convert. As inputs they are
    never copied (3 s), and become initializers afterwards."""
    variables = model.trainable_variables + model.non_trainable_variables
    specs = [
        tf.TensorSpec(variable.shape, variable.dtype, name=f"{_WEIGHT}{index}")
        for index, variable in enumerate(variables)
    ]
    trainable = len(model.trainable_variables)

    def predict_pixels(images, *weights):
        logits, _ = model.stateless_call(
            list(weights[:trainable]), list(weights[trainable:]), images, training=False
        )
        return {PROBABILITIES: tf.nn.softmax(tf.cast(logits, tf.float32))}

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    function = tf.function(predict_pixels, input_signature=[pixels_spec(), *specs])
    onnx_model, _ = tf2onnx.convert.from_function(
        function, input_signature=[pixels_spec(), *specs], opset=ONNX_OPSET
    )
    graph = onnx_model.graph
    weights = {spec.name: variable for spec, variable in zip(specs, variables)}
    inputs = [graph_input for graph_input in graph.input if graph_input.name not in weights]
    read = {name for node in graph.node for name in node.input}
    used = [name for name in weights if name in read]  # not the dropout's seeds, e.g.
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(
        onnx.numpy_helper.from_array(np.asarray(weights[name]), name) for name in used
    )
    return onnx_model


def _optimized(onnx_model):
    """ONNX Runtime's basic graph optimizations, written out: the weights' transposes and
    splits folded into the initializers, each bias added inside its Conv or Gemm. The basic
    level rewrites into standard ONNX operators only."""
    with tempfile.TemporaryDirectory(prefix="alexnet-onnx-") as folder:
        path = pathlib.Path(folder) / "optimized.onnx"
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        onnxruntime.InferenceSession(
            onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        optimized = onnx.load(str(path))
    # ONNX Runtime declares every operator domain it knows; keep those the graph uses.
    domains = {node.domain for node in optimized.graph.node}
    imports = [entry for entry in optimized.opset_import if entry.domain in domains]
    del optimized.opset_import[:]
    optimized.opset_import.extend(imports)
    optimized.producer_name, optimized.producer_version = (
        onnx_model.producer_name,
        onnx_model.producer_version,
    )
    return optimized


def onnx_lrn(layer):
    """A `LocalResponseNormalization` layer's constants as ONNX's LRN takes them."""
    size = 2 * layer.depth_radius + 1
    return {"size": size, "alpha": layer.alpha * size, "beta": layer.beta, "bias": layer.bias}


def lrn_attributes(onnx_model):
    """The attributes of each LRN node, in graph order."""
    return [
        {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        for node in onnx_model.graph.node
        if node.op_type == "LRN"
    ]


def read_labels(content):
    """The class names an ONNX model (its bytes) carries."""
    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map[LABELS_KEY].splitlines()


def runner(content, num_threads=None):
    """A function: float32 pixels [batch, 227, 227, 3] -> probabilities, run by ONNX
    Runtime's CPU provider on the .onnx bytes."""
    options = onnxruntime.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run([PROBABILITIES], {PIXELS: np.asarray(images, np.float32)})[0]


def probabilities(content, images):
    return runner(content)(images)
