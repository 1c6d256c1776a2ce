"""bvlc_alexnet files of our own making, in the published formats, for the import tests and
bench/import_weights_memory.py: random weights (Caffe's layouts) written as a Caffe
`.caffemodel` in either encoding, with the whole train_val layer list, or as
caffe-tensorflow's `bvlc_alexnet.npy`, pickled the way Python 2 did.

Written from caffe.proto's field numbers (BVLC/caffe `src/caffe/proto/caffe.proto`) and
pickle's opcodes, independently of the reader in alexnet_keras/weight_files.py.
"""

import itertools
import struct

import numpy as np

WIDTHS = {
    "conv1": 96,
    "conv2": 256,
    "conv3": 384,
    "conv4": 384,
    "conv5": 256,
    "fc6": 4096,
    "fc7": 4096,
}
# name: (kernel, stride, pad, group) of bvlc_alexnet's convolutions
CONVOLUTIONS = {
    "conv1": (11, 4, 0, 1),
    "conv2": (5, 1, 2, 2),
    "conv3": (3, 1, 1, 1),
    "conv4": (3, 1, 1, 2),
    "conv5": (3, 1, 1, 2),
}
CAFFE_LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


def random_weights(width_multiplier=1.0, num_classes=1000, seed=0):
    """{layer: (weights, biases)} in Caffe's layouts, float32, scaled so that activations
    stay of the order of the inputs (He-like weights, small positive biases)."""
    rng = np.random.default_rng(seed)
    widths = {name: int(channels * width_multiplier) for name, channels in WIDTHS.items()}
    widths["fc8"] = num_classes
    inputs = {
        "conv1": 3,
        "conv2": widths["conv1"],
        "conv3": widths["conv2"],
        "conv4": widths["conv3"],
        "conv5": widths["conv4"],
        "fc6": widths["conv5"] * 36,
        "fc7": widths["fc6"],
        "fc8": widths["fc7"],
    }
    weights = {}
    for name, fan_in in inputs.items():
        out = widths[name]
        if name in CONVOLUTIONS:
            kernel, _, _, group = CONVOLUTIONS[name]
            shape = (out, fan_in // group, kernel, kernel)
        else:
            shape = (out, fan_in)
        scale = np.sqrt(2.0 / np.prod(shape[1:]))
        weight = rng.standard_normal(shape, dtype=np.float32)
        weight *= np.float32(scale)
        weights[name] = (weight, rng.uniform(0.0, 0.2, out).astype(np.float32))
    return weights


def train_val_layers(caffenet_order=False):
    """bvlc_alexnet's train_val.prototxt: (name, type, bottoms, tops) in order. With
    `caffenet_order`, pooling before normalization, as bvlc_reference_caffenet."""
    layers = [("data", "Data", [], ["data", "label"])]
    previous = "data"
    for index in (1, 2):
        conv, relu, norm, pool = f"conv{index}", f"relu{index}", f"norm{index}", f"pool{index}"
        layers += [(conv, "Convolution", [previous], [conv]), (relu, "ReLU", [conv], [conv])]
        if caffenet_order:
            layers += [(pool, "Pooling", [conv], [pool]), (norm, "LRN", [pool], [norm])]
            previous = norm
        else:
            layers += [(norm, "LRN", [conv], [norm]), (pool, "Pooling", [norm], [pool])]
            previous = pool
    for index in (3, 4, 5):
        layers += [
            (f"conv{index}", "Convolution", [previous], [f"conv{index}"]),
            (f"relu{index}", "ReLU", [f"conv{index}"], [f"conv{index}"]),
        ]
        previous = f"conv{index}"
    layers.append(("pool5", "Pooling", ["conv5"], ["pool5"]))
    previous = "pool5"
    for index in (6, 7):
        fc = f"fc{index}"
        layers += [
            (fc, "InnerProduct", [previous], [fc]),
            (f"relu{index}", "ReLU", [fc], [fc]),
            (f"drop{index}", "Dropout", [fc], [fc]),
        ]
        previous = fc
    layers += [
        ("fc8", "InnerProduct", ["fc7"], ["fc8"]),
        ("accuracy", "Accuracy", ["fc8", "label"], ["accuracy"]),
        ("loss", "SoftmaxWithLoss", ["fc8", "label"], ["loss"]),
    ]
    return layers


# === Protocol buffers ===


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number, wire_type):
    return _varint(number << 3 | wire_type)


def _bytes_field(number, payload):
    return _key(number, 2) + _varint(len(payload)) + payload


def _int_field(number, value):
    return _key(number, 0) + _varint(value)


def _float_field(number, value):
    return _key(number, 5) + struct.pack("<f", value)


def _packed_ints(number, values):
    return _bytes_field(number, b"".join(_varint(value) for value in values))


# Field numbers: LayerParameter (current) and V1LayerParameter (legacy).
CURRENT = {
    "name": 1,
    "type": 2,
    "bottom": 3,
    "top": 4,
    "blobs": 7,
    "convolution": 106,
    "dropout": 108,
    "inner_product": 117,
    "lrn": 118,
    "pooling": 121,
}
LEGACY = {
    "name": 4,
    "type": 5,
    "bottom": 2,
    "top": 3,
    "blobs": 6,
    "convolution": 10,
    "dropout": 12,
    "inner_product": 17,
    "lrn": 18,
    "pooling": 19,
}
V1_ENUM = {
    "Data": 5,
    "Convolution": 4,
    "ReLU": 18,
    "LRN": 15,
    "Pooling": 17,
    "InnerProduct": 14,
    "Dropout": 6,
    "Accuracy": 1,
    "SoftmaxWithLoss": 21,
}


def _blob(array, legacy):
    array = np.ascontiguousarray(array, "<f4")
    if legacy:  # num, channels, height, width: fc weights 1x1xNxK, biases 1x1x1xN
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_int_field(number, dim) for number, dim in zip((1, 2, 3, 4), dims))
    else:
        head = _bytes_field(7, _packed_ints(1, array.shape))
    return head + _bytes_field(5, array.tobytes())


def _parameters(name, kind, fields, overrides, weights):
    parameters = dict(overrides.get(name, {}))
    if kind == "Convolution":
        kernel, stride, pad, group = CONVOLUTIONS[name]
        values = {
            "num_output": weights[name][0].shape[0],
            "pad": pad,
            "kernel_size": kernel,
            "group": group,
            "stride": stride,
            **parameters,
        }
        numbers = {"num_output": 1, "pad": 3, "kernel_size": 4, "group": 5, "stride": 6}
        payload = b"".join(
            _int_field(numbers[key], value) for key, value in values.items() if value is not None
        )
        # a weight_filler (field 7: type 1, std 3), as train_val.prototxt has, to skip
        payload += _bytes_field(7, _bytes_field(1, b"gaussian") + _float_field(3, 0.01))
        return _bytes_field(fields["convolution"], payload)
    if kind == "LRN":
        values = {**CAFFE_LRN, **parameters}
        payload = (
            _int_field(1, values["local_size"])
            + _float_field(2, values["alpha"])
            + _float_field(3, values["beta"])
            + _float_field(5, values["k"])
        )
        return _bytes_field(fields["lrn"], payload)
    if kind == "Pooling":
        values = {"pool": 0, "kernel_size": 3, "stride": 2, **parameters}
        payload = b"".join(
            _int_field(number, values[key])
            for number, key in ((1, "pool"), (2, "kernel_size"), (3, "stride"))
        )
        return _bytes_field(fields["pooling"], payload)
    if kind == "InnerProduct":
        return _bytes_field(fields["inner_product"], _int_field(1, weights[name][0].shape[0]))
    if kind == "Dropout":
        return _bytes_field(fields["dropout"], _float_field(1, 0.5))
    return b""


def _layer_message(layer, fields, legacy, weights, overrides):
    name, kind, bottoms, tops = layer
    message = _bytes_field(fields["name"], name.encode())
    message += (
        _int_field(fields["type"], V1_ENUM[kind])
        if legacy
        else _bytes_field(fields["type"], kind.encode())
    )
    message += b"".join(_bytes_field(fields["bottom"], bottom.encode()) for bottom in bottoms)
    message += b"".join(_bytes_field(fields["top"], top.encode()) for top in tops)
    if name in weights:
        if legacy:  # blobs_lr (7) and weight_decay (8), unpacked floats, to skip
            message += _float_field(7, 1.0) + _float_field(7, 2.0) + _float_field(8, 1.0)
        else:  # param (6): ParamSpec lr_mult (3), to skip
            message += _bytes_field(6, _float_field(3, 1.0)) * 2
        message += b"".join(
            _bytes_field(fields["blobs"], _blob(blob, legacy)) for blob in weights[name]
        )
    if kind == "Accuracy" and not legacy:  # include { phase: TEST } (8: NetStateRule phase 1)
        message += _bytes_field(8, _int_field(1, 1))
    return message + _parameters(name, kind, fields, overrides, weights)


def write_caffemodel(path, weights, encoding="layer", layers=None, overrides=None):
    """Writes a binary NetParameter: `encoding` "layer" (current, field 100) or "layers"
    (legacy V1, field 2). `layers`: (name, type, bottoms, tops), default bvlc_alexnet's
    train_val list; `overrides`: {layer: {parameter: value}} to write other parameters."""
    legacy = encoding == "layers"
    fields, number = (LEGACY, 2) if legacy else (CURRENT, 100)
    with open(path, "wb") as handle:
        handle.write(_bytes_field(1, b"AlexNet"))
        for layer in layers or train_val_layers():
            message = _layer_message(layer, fields, legacy, weights, overrides or {})
            handle.write(_bytes_field(number, message))
    return path


# === caffe-tensorflow's .npy, pickled by Python 2 ===


def npy_layout(weights):
    """Caffe's layouts -> caffe-tensorflow's: conv kernels HWIO, fc kernels (in, out) with
    fc6's rows in H,W,C order; inputs still BGR."""
    converted = {}
    for name, (weight, bias) in weights.items():
        if weight.ndim == 4:
            weight = weight.transpose(2, 3, 1, 0)
        elif name == "fc6":
            out, inputs = weight.shape
            weight = (
                weight.reshape(out, inputs // 36, 6, 6).transpose(2, 3, 1, 0).reshape(inputs, out)
            )
        else:
            weight = weight.T
        converted[name] = [np.ascontiguousarray(weight), bias]
    return converted


_memo = itertools.count()


def _py2_string(data):
    # Python 2's cPickle memoized every string (LONG_BINPUT): the unpickler keeps them all,
    # the arrays' bytes included, until the load ends.
    put = b"r" + struct.pack("<I", next(_memo))
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data + put  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data + put  # BINSTRING


def _py2_int(value):
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_tuple(items):
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _py2_dtype(descr, byte_order, flags):
    return (
        b"cnumpy\ndtype\n"
        + _py2_tuple([_py2_string(descr), _py2_int(0), _py2_int(1)])
        + b"R"
        + _py2_tuple(
            [
                _py2_int(3),
                _py2_string(byte_order),
                b"N",
                b"N",
                b"N",
                _py2_int(-1),
                _py2_int(-1),
                _py2_int(flags),
            ]
        )
        + b"b"
    )


def _py2_array(shape, dtype_pickle, state):
    """`dtype_pickle` and `state` are called where their bytes go: cPickle numbers its memo
    (LONG_BINPUT) in the order the stream is written."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + _py2_tuple([b"cnumpy\nndarray\n", _py2_tuple([_py2_int(0)]), _py2_string(b"b")])
        + b"R"
        + _py2_tuple(
            [
                _py2_int(1),
                _py2_tuple([_py2_int(size) for size in shape]),
                dtype_pickle(),
                b"\x89",
                state(),
            ]
        )
        + b"b"
    )


def _py2_pickle(value):
    if isinstance(value, dict):
        return (
            b"}("
            + b"".join(_py2_pickle(key) + _py2_pickle(item) for key, item in value.items())
            + b"u"
        )
    if isinstance(value, list):
        return b"](" + b"".join(_py2_pickle(item) for item in value) + b"e"
    if isinstance(value, str):
        return _py2_string(value.encode())
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value, "<f4")
        return _py2_array(
            array.shape,
            lambda: _py2_dtype(b"f4", b"<", 0),
            lambda: _py2_string(array.tobytes()),
        )
    raise TypeError(type(value))


def write_npy(path, weights, layout=True):
    """Writes caffe-tensorflow's bvlc_alexnet.npy as Python 2's numpy.save did: a 0-d object
    array holding {layer: [weights, biases]}, pickled with protocol 2 (str for bytes).
    `weights` in Caffe's layouts (converted) or, with layout=False, as given."""
    global _memo
    _memo = itertools.count()  # as cPickle, each pickle numbers its memo from 0
    content = npy_layout(weights) if layout else weights
    header = np.lib.format.header_data_from_array_1_0(np.empty((), object))
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        object_array = _py2_array(
            (),
            lambda: _py2_dtype(b"O8", b"|", 63),
            lambda: b"](" + _py2_pickle(content) + b"e",
        )
        handle.write(b"\x80\x02" + object_array + b".")
    return path
