"""Caffe's published bvlc_alexnet weights as one of our models.

    python import_weights.py --weights bvlc_alexnet.caffemodel --output bvlc_alexnet.keras

Takes what alexnet_keras/weight_files.py reads from a Caffe `.caffemodel` or caffe-tensorflow's
`bvlc_alexnet.npy`, checks it against bvlc_alexnet layer by layer, and builds our model with
Caffe's numbers (`LRN_CAFFE`, biases 0.1), taking RGB pixels in [0, 255] like every model of
ours: conv1's input channels are reversed (Caffe's weights expect BGR), the mean is
subtracted inside the model and fc6's kernel is reordered from Caffe's C,H,W flattening to
our H,W,C.
"""

import contextlib

import numpy as np

from alexnet_keras.layers import LRN_CAFFE
from alexnet_keras.model import GROUPS, build_alexnet, layer_widths
from alexnet_keras.weight_files import (
    CAFFE_CURRENT,
    CAFFE_LEGACY,
    NPY,
    POOL_METHODS,
    read_weights_file,
)
from alexnet_keras_base import files
from alexnet_keras_base.errors import UsageError

# Caffe's classifier averages ilsvrc_2012_mean.npy (3 x 256 x 256) per channel: B, G, R.
ILSVRC_2012_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
NUM_CLASSES = 1000
BIAS_INIT = 0.1  # Caffe's bvlc_alexnet: recorded in the model's config, for fine-tuning
POOL_SIZE, POOL_STRIDE = 3, 2
POOL5_SIZE = 6  # pool5's height and width at 227x227


# === bvlc_alexnet, as its train_val.prototxt describes it ===


def reference_layers(width_multiplier=1.0, num_classes=NUM_CLASSES):
    """bvlc_alexnet's computing layers in order: (name, Caffe type, parameters, blob
    shapes). ReLU is checked separately; data, dropout, accuracy and loss layers skipped."""
    widths = {**layer_widths(width_multiplier), "fc8": num_classes}

    def conv(name, inputs, kernel, stride, pad, group):
        out = widths[name]
        return (
            name,
            "Convolution",
            {"num_output": out, "kernel": kernel, "stride": stride, "pad": pad, "group": group},
            [(out, inputs // group, kernel, kernel), (out,)],
        )

    def fc(name, inputs):
        out = widths[name]
        return (name, "InnerProduct", {"num_output": out}, [(out, inputs), (out,)])

    lrn = {
        "local_size": 2 * LRN_CAFFE["depth_radius"] + 1,
        "alpha": 1e-4,
        "beta": LRN_CAFFE["beta"],
        "k": LRN_CAFFE["bias"],
    }
    pool = {"pool": "MAX", "kernel": POOL_SIZE, "stride": POOL_STRIDE, "pad": 0}
    return [
        conv("conv1", 3, 11, 4, 0, 1),
        ("norm1", "LRN", lrn, []),
        ("pool1", "Pooling", pool, []),
        conv("conv2", widths["conv1"], 5, 1, 2, GROUPS),
        ("norm2", "LRN", lrn, []),
        ("pool2", "Pooling", pool, []),
        conv("conv3", widths["conv2"], 3, 1, 1, 1),
        conv("conv4", widths["conv3"], 3, 1, 1, GROUPS),
        conv("conv5", widths["conv4"], 3, 1, 1, GROUPS),
        ("pool5", "Pooling", pool, []),
        fc("fc6", widths["conv5"] * POOL5_SIZE * POOL5_SIZE),
        fc("fc7", widths["fc6"]),
        fc("fc8", widths["fc7"]),
    ]


RELU_AFTER = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# Layers of a train_val net that hold no weights and do not change what fc8 computes at test
# time: skipped. ReLU is checked to sit where the model applies it.
SKIPPED_TYPES = {
    "Data",
    "ImageData",
    "Input",
    "DummyData",
    "MemoryData",
    "HDF5Data",
    "WindowData",
    "Dropout",
    "Accuracy",
    "SoftmaxWithLoss",
    "Softmax",
    "Silence",
    "Split",
}


# === Checking a Caffe net against bvlc_alexnet ===


def _pair(parameters, single, height, width, default):
    values = parameters.get(single)
    if isinstance(values, list):
        values = values or [default]
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise UsageError(f"{single} has {len(values)} values: not a 2-D layer")
        pair = tuple(values)
    else:
        pair = (values if values is not None else default,) * 2
    if height in parameters or width in parameters:
        pair = (parameters.get(height, pair[0]), parameters.get(width, pair[1]))
    return pair


def _described(name, kind, parameters):
    """What the file says a layer computes, in the reference's terms."""
    if kind == "Convolution":
        kernel = _pair(parameters, "kernel_size", "kernel_h", "kernel_w", None)
        stride = _pair(parameters, "stride", "stride_h", "stride_w", 1)
        pad = _pair(parameters, "pad", "pad_h", "pad_w", 0)
        if set(parameters.get("dilation", [1])) != {1}:
            raise UsageError(
                f"layer {name}: dilation {parameters['dilation']}, bvlc_alexnet has none"
            )
        if not parameters.get("bias_term", 1):
            raise UsageError(f"layer {name}: no bias term, bvlc_alexnet has one")
        return {
            "num_output": parameters.get("num_output"),
            "kernel": kernel[0] if kernel[0] == kernel[1] else kernel,
            "stride": stride[0] if stride[0] == stride[1] else stride,
            "pad": pad[0] if pad[0] == pad[1] else pad,
            "group": parameters.get("group", 1),
        }
    if kind == "InnerProduct":
        if not parameters.get("bias_term", 1):
            raise UsageError(f"layer {name}: no bias term, bvlc_alexnet has one")
        if parameters.get("transpose", 0):
            raise UsageError(f"layer {name}: transposed weights, bvlc_alexnet's are not")
        if parameters.get("axis", 1) != 1:
            raise UsageError(f"layer {name}: axis {parameters['axis']}, bvlc_alexnet's is 1")
        return {"num_output": parameters.get("num_output")}
    if kind == "LRN":
        if parameters.get("norm_region", 0) != 0:
            raise UsageError(
                f"layer {name}: LRN within channels, bvlc_alexnet normalizes across channels"
            )
        return {
            "local_size": parameters.get("local_size", 5),
            "alpha": parameters.get("alpha", 1.0),
            "beta": parameters.get("beta", 0.75),
            "k": parameters.get("k", 1.0),
        }
    if kind == "Pooling":
        if parameters.get("global_pooling", 0):
            raise UsageError(f"layer {name}: global pooling, bvlc_alexnet's is 3x3 stride 2")
        kernel = _pair(parameters, "kernel_size", "kernel_h", "kernel_w", None)
        stride = _pair(parameters, "stride", "stride_h", "stride_w", 1)
        pad = _pair(parameters, "pad", "pad_h", "pad_w", 0)
        return {
            "pool": POOL_METHODS.get(parameters.get("pool", 0), "unknown"),
            "kernel": kernel[0] if kernel[0] == kernel[1] else kernel,
            "stride": stride[0] if stride[0] == stride[1] else stride,
            "pad": pad[0] if pad[0] == pad[1] else pad,
        }
    return {}


def _differences(expected, actual):
    differences = []
    for key, value in expected.items():
        found = actual.get(key)
        if isinstance(value, float):
            same = found is not None and abs(found - value) <= 1e-6 * max(abs(value), 1e-30)
        else:
            same = found == value
        if not same:
            differences.append(f"{key} {found} (bvlc_alexnet: {value})")
    return differences


def _blob_as(blob, shape, layer_name, what):
    """The blob in the reference's shape; Caffe's legacy 4-D blobs pad with leading 1s."""
    actual = tuple(blob.shape)
    extra = len(actual) - len(shape)
    if actual == tuple(shape) or (
        extra > 0 and actual[extra:] == tuple(shape) and all(size == 1 for size in actual[:extra])
    ):
        return blob.reshape(shape)
    raise UsageError(
        f"layer {layer_name}: {what} of shape {actual}, bvlc_alexnet's is {tuple(shape)}"
    )


def check_caffe_layers(layers, width_multiplier=1.0, num_classes=NUM_CLASSES):
    """Checks a Caffe net's layers against bvlc_alexnet; returns {layer: (weights, biases)}
    in Caffe's layouts. Raises UsageError naming the layer and the difference."""
    reference = reference_layers(width_multiplier, num_classes)
    expected_names = [name for name, *_ in reference]
    computing = [
        layer for layer in layers if layer["type"] not in SKIPPED_TYPES and layer["type"] != "ReLU"
    ]
    names = [layer["name"] for layer in computing]
    by_name = {}
    for layer in computing:
        if layer["name"] in by_name:
            raise UsageError(f"two layers named {layer['name']}: not bvlc_alexnet")
        by_name[layer["name"]] = layer
    for name in names:
        if name not in expected_names:
            layer = by_name[name]
            raise UsageError(
                f"layer {name} ({layer['type']}) is not in bvlc_alexnet: another network"
            )
    for name in expected_names:
        if name not in by_name:
            raise UsageError(
                f"layer {name} is missing: bvlc_alexnet has {', '.join(expected_names)}"
            )
    if names != expected_names:
        for index in (1, 2):
            if names.index(f"pool{index}") < names.index(f"norm{index}"):
                raise UsageError(
                    f"layer norm{index} comes after pool{index}: this is CaffeNet "
                    f"(bvlc_reference_caffenet, pooling before normalization), not "
                    f"bvlc_alexnet, which normalizes before pooling"
                )
        first = next(index for index, (a, b) in enumerate(zip(names, expected_names)) if a != b)
        raise UsageError(
            f"layer {names[first]} comes where bvlc_alexnet has "
            f"{expected_names[first]}: the layer order is "
            f"{', '.join(names)}, bvlc_alexnet's is {', '.join(expected_names)}"
        )
    relu_inputs = {
        layer["bottom"][0] for layer in layers if layer["type"] == "ReLU" and layer["bottom"]
    }
    weights = {}
    for name, kind, expected, shapes in reference:
        layer = by_name[name]
        if layer["type"] != kind:
            raise UsageError(
                f"layer {name} is a {layer['type']} layer, bvlc_alexnet's is a {kind} layer"
            )
        tops = layer["top"] or [name]
        has_relu = tops[0] in relu_inputs
        if has_relu != (name in RELU_AFTER):
            raise UsageError(
                f"layer {name}: {'a' if has_relu else 'no'} ReLU after it, "
                f"bvlc_alexnet has {'none' if has_relu else 'one'}"
            )
        differences = _differences(expected, _described(name, kind, layer["parameters"]))
        if differences:
            raise UsageError(f"layer {name}: {'; '.join(differences)}")
        if len(layer["blobs"]) != len(shapes):
            raise UsageError(
                f"layer {name} holds {len(layer['blobs'])} blobs, bvlc_alexnet's "
                f"holds {len(shapes)}"
            )
        if shapes:
            weights[name] = (
                _blob_as(layer["blobs"][0], shapes[0], name, "weights"),
                _blob_as(layer["blobs"][1], shapes[1], name, "biases"),
            )
    return weights


# === caffe-tensorflow's bvlc_alexnet.npy ===


def check_npy_layers(weights, width_multiplier=1.0, num_classes=NUM_CLASSES):
    """Checks caffe-tensorflow's arrays against bvlc_alexnet's shapes (conv kernels HWIO with
    per-group inputs, fc kernels (inputs, outputs)); returns them in Caffe's layouts, fc6's
    as (out, C, H, W), so that one conversion serves both formats. All are views: the
    conversion back to our layouts copies nothing but conv1."""
    expected = {
        name: shapes
        for name, _, _, shapes in reference_layers(width_multiplier, num_classes)
        if shapes
    }
    for name in weights:
        if name not in expected:
            raise UsageError(f"layer {name} is not in bvlc_alexnet: another network")
    caffe = {}
    for name, (weight_shape, bias_shape) in expected.items():
        if name not in weights:
            raise UsageError(f"layer {name} is missing: bvlc_alexnet has {', '.join(expected)}")
        kernel, bias = weights[name]
        if len(weight_shape) == 4:
            out, inputs, height, width = weight_shape
            kernel = _blob_as(kernel, (height, width, inputs, out), name, "weights")
            kernel = kernel.transpose(3, 2, 0, 1)
        else:
            out, inputs = weight_shape
            kernel = _blob_as(kernel, (inputs, out), name, "weights")
            if name == "fc6":  # rows in H,W,C order here: Caffe's (out, C, H, W), as a view
                channels = inputs // (POOL5_SIZE * POOL5_SIZE)
                kernel = kernel.reshape(POOL5_SIZE, POOL5_SIZE, channels, out).transpose(3, 2, 0, 1)
            else:
                kernel = kernel.T
        caffe[name] = (kernel, _blob_as(bias, bias_shape, name, "biases"))
    return caffe


# === Building the model ===


def to_keras_weights(caffe_weights):
    """Caffe's layouts -> our layers' weights: conv (out, in/group, kh, kw) -> (kh, kw,
    in/group, out), conv1's input channels reversed (BGR -> RGB), fc (out, in) -> (in, out),
    fc6's inputs from C,H,W to H,W,C order."""
    keras_weights = {}
    for name, (kernel, bias) in caffe_weights.items():
        if name == "fc6":  # (out, C*H*W), or (out, C, H, W) from the .npy
            out, inputs = kernel.shape[0], kernel[0].size
            channels = inputs // (POOL5_SIZE * POOL5_SIZE)
            kernel = (
                kernel.reshape(out, channels, POOL5_SIZE, POOL5_SIZE)
                .transpose(2, 3, 1, 0)
                .reshape(inputs, out)
            )
        elif kernel.ndim == 4:
            kernel = kernel.transpose(2, 3, 1, 0)
            if name == "conv1":
                kernel = kernel[:, :, ::-1, :]
        else:
            kernel = kernel.T
        keras_weights[name] = (
            np.ascontiguousarray(kernel, np.float32),
            np.ascontiguousarray(bias, np.float32),
        )
    return keras_weights


def build_imported_model(
    caffe_weights,
    bgr_mean=ILSVRC_2012_BGR_MEAN,
    class_names=None,
    width_multiplier=1.0,
    release_source=None,
):
    """Our AlexNet with Caffe's constants, holding `caffe_weights` (Caffe's layouts; each
    layer's entry is dropped once converted). `release_source` is called after each layer's
    conversion, before its weights are assigned."""
    import keras
    import tensorflow as tf

    num_classes = caffe_weights["fc8"][0].shape[0]
    # Zeros, not random numbers: drawing 61 M of them would cost time and about three times
    # their memory, for values overwritten at once.
    model = build_alexnet(
        num_classes=num_classes,
        width_multiplier=width_multiplier,
        bias_init=BIAS_INIT,
        kernel_init="zeros",
        lrn=LRN_CAFFE,
        rgb_mean=tuple(reversed(bgr_mean)),
        input_scale=1.0,
        name="bvlc_alexnet",
    )
    for name in WEIGHT_LAYERS:
        layer = model.get_layer(name)
        # One layer at a time, so that only one converted copy is alive beside the file.
        kernel, bias = to_keras_weights({name: caffe_weights.pop(name)})[name]
        # min and max are NaN or infinite if any value is; no array of flags allocated
        if not all(np.isfinite([kernel.min(), kernel.max(), bias.min(), bias.max()])):
            raise UsageError(
                f"layer {name} holds values that are not finite (NaN or infinity): a damaged file"
            )
        if release_source is not None:
            release_source()
        # As a tensor before assigning, so that the NumPy copy is freed first: at most two
        # copies of fc6's 151 MB exist at once.
        kernel = tf.convert_to_tensor(kernel)
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
        del kernel, bias
        # The config records the paper's initializer, as build_alexnet's default: a layer
        # rebuilt from it (a fresh fc8 for fine-tuning) starts like one of ours.
        layer.kernel_initializer = keras.initializers.RandomNormal(mean=0.0, stddev=0.01)
    if class_names is not None:
        # In fc8's config: saved with the model, read back by serving.labels_for_model.
        model.get_layer("fc8").set_class_names(class_names)
    return model


SOURCES = {  # what read_weights_file found, in words
    NPY: "caffe-tensorflow .npy",
    CAFFE_CURRENT: "Caffe .caffemodel, current (layer) encoding",
    CAFFE_LEGACY: "Caffe .caffemodel, legacy V1 (layers) encoding",
}


@contextlib.contextmanager
def checked_weights(weights_path, width_multiplier=1.0, num_classes=NUM_CLASSES):
    """Reads a bvlc_alexnet file (opened once) and checks it: yields (what was read, in
    words; {layer: (weights, biases)} in Caffe's layouts; release), release as
    weight_files.read_weights_file's. UsageError for a file that is not bvlc_alexnet."""
    with read_weights_file(weights_path) as (kind, contents, release):
        if kind == NPY:
            caffe_weights = check_npy_layers(contents, width_multiplier, num_classes)
        else:
            caffe_weights = check_caffe_layers(contents, width_multiplier, num_classes)
        del contents
        yield SOURCES[kind], caffe_weights, release


def import_weights(
    weights_path,
    output_path,
    bgr_mean=ILSVRC_2012_BGR_MEAN,
    class_names=None,
    width_multiplier=1.0,
    num_classes=NUM_CLASSES,
):
    """Reads, checks and converts a bvlc_alexnet file; writes the model to `output_path`
    (a .keras file, atomically). Returns (what was read, in words; the model)."""
    with checked_weights(weights_path, width_multiplier, num_classes) as checked:
        source, caffe_weights, release = checked
        del checked
        # A .caffemodel's pages read so far count in the process's memory until released;
        # the file stays in the page cache, so releasing them costs nothing.
        model = build_imported_model(
            caffe_weights, bgr_mean, class_names, width_multiplier, release_source=release
        )
        del caffe_weights
    with files.replaced_atomically(output_path) as temporary:
        model.save(temporary)
    return source, model
