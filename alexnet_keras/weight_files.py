"""What a bvlc_alexnet weights file says, read without running anything it contains: the
file opened once and its format read from its first bytes, Caffe's binary `NetParameter`
(`.caffemodel`, both layer encodings) by a protobuf wire-format reader of our own,
caffe-tensorflow's pickled `.npy` by alexnet_keras/npy_weights.py. alexnet_keras/caffe_weights.py
checks and converts what these return; alexnet_keras/means_and_names.py reads the other
files of an import.

Every length and count the file states is checked against the file before it is used: a
damaged file is refused with a UsageError, and costs no more memory than its own size.
Field numbers are those of BVLC/caffe's `src/caffe/proto/caffe.proto`.
"""

import contextlib
import math
import mmap
import os
import pathlib
import struct

import numpy as np

from alexnet_keras.npy_weights import MAX_AXES, NPY_MAGIC, read_npy_weights
from alexnet_keras_base.errors import UsageError

# What read_weights_file yields as the kind of file: the .npy, or a .caffemodel's encoding.
NPY, CAFFE_CURRENT, CAFFE_LEGACY = "npy", "layer", "layers"


# === The protobuf wire format ===

# V1LayerParameter.type, the enum of the legacy encoding (caffe.proto's V1 LayerType).
V1_TYPES = {
    1: "Accuracy",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    12: "ImageData",
    14: "InnerProduct",
    15: "LRN",
    17: "Pooling",
    18: "ReLU",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    24: "WindowData",
    29: "MemoryData",
    32: "DummyData",
    36: "Silence",
    9: "HDF5Data",
}
V1_TYPE_NAMES = {
    3: "Concat",
    8: "Flatten",
    25: "Eltwise",
    19: "Sigmoid",
    23: "TanH",
    35: "AbsVal",
    26: "Power",
    33: "Slice",
    34: "MVN",
    39: "Deconvolution",
}


def _varint(data, position, end):
    result = shift = 0
    while True:
        if position >= end:
            raise UsageError("the file ends inside a field: truncated, or not a Caffe model")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise UsageError("a malformed number: not a Caffe model")


def _fields(data, start, end):
    """Yields (field number, wire type, value) of the message in data[start:end]: an int for
    varints, (start, end) offsets for length-delimited fields, raw bytes for fixed ones."""
    position = start
    while position < end:
        key, position = _varint(data, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise UsageError("a field numbered 0: not a Caffe model")
        if wire_type == 0:
            value, position = _varint(data, position, end)
        elif wire_type == 2:
            length, position = _varint(data, position, end)
            if position + length > end:
                raise UsageError(
                    "a field runs past the end of its message: the file is "
                    "truncated, or not a Caffe model"
                )
            value, position = (position, position + length), position + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if position + size > end:
                raise UsageError("the file ends inside a field: truncated, or not a Caffe model")
            value, position = bytes(data[position : position + size]), position + size
        else:
            raise UsageError(
                f"wire type {wire_type} (field {number}) does not occur in "
                f"Caffe models: not a Caffe model, or a damaged one"
            )
        yield number, wire_type, value


def _string(data, span):
    try:
        return bytes(data[span[0] : span[1]]).decode()
    except UnicodeDecodeError:
        raise UsageError("a layer name or type that is not text: not a Caffe model") from None


def _integer(wire_type, value):
    # Caffe writes its single integers as varints; packed form is for repeated fields.
    if wire_type != 0:
        raise UsageError("a malformed integer field: not a Caffe model")
    return value


def _extend_varints(numbers, data, wire_type, value):
    """Appends a repeated integer field's values (one, or packed) to `numbers`: at most
    MAX_AXES in all, so that a damaged length cannot make a list of millions."""
    if wire_type == 0:
        numbers.append(value)
    elif wire_type == 2:
        position, end = value
        while position < end and len(numbers) <= MAX_AXES:
            number, position = _varint(data, position, end)
            numbers.append(number)
    else:
        raise UsageError("a malformed integer field: not a Caffe model")
    if len(numbers) > MAX_AXES:
        raise UsageError(f"a field of more than {MAX_AXES} integers: not a Caffe model")
    return numbers


def _float(wire_type, value):
    if wire_type != 5:
        raise UsageError("a malformed float field: not a Caffe model")
    return struct.unpack("<f", value)[0]


def _message(data, span, fields):
    """Parses a small parameter message: `fields` maps numbers to (name, kind), kind in
    "int", "ints" (repeated), "float"; other fields are ignored."""
    parsed = {}
    for number, wire_type, value in _fields(data, *span):
        if number not in fields:
            continue
        name, kind = fields[number]
        if kind == "float":
            parsed[name] = _float(wire_type, value)
        elif kind == "ints":
            _extend_varints(parsed.setdefault(name, []), data, wire_type, value)
        else:
            parsed[name] = _integer(wire_type, value)
    return parsed


_CONVOLUTION_FIELDS = {
    1: ("num_output", "int"),
    2: ("bias_term", "int"),
    3: ("pad", "ints"),
    4: ("kernel_size", "ints"),
    5: ("group", "int"),
    6: ("stride", "ints"),
    9: ("pad_h", "int"),
    10: ("pad_w", "int"),
    11: ("kernel_h", "int"),
    12: ("kernel_w", "int"),
    13: ("stride_h", "int"),
    14: ("stride_w", "int"),
    18: ("dilation", "ints"),
}

_POOLING_FIELDS = {
    1: ("pool", "int"),
    2: ("kernel_size", "int"),
    3: ("stride", "int"),
    4: ("pad", "int"),
    5: ("kernel_h", "int"),
    6: ("kernel_w", "int"),
    7: ("stride_h", "int"),
    8: ("stride_w", "int"),
    9: ("pad_h", "int"),
    10: ("pad_w", "int"),
    12: ("global_pooling", "int"),
}

_LRN_FIELDS = {
    1: ("local_size", "int"),
    2: ("alpha", "float"),
    3: ("beta", "float"),
    4: ("norm_region", "int"),
    5: ("k", "float"),
}

_INNER_PRODUCT_FIELDS = {
    1: ("num_output", "int"),
    2: ("bias_term", "int"),
    5: ("axis", "int"),
    6: ("transpose", "int"),
}

POOL_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}

# Field numbers of LayerParameter (current) and V1LayerParameter (legacy).
_CURRENT = {
    "name": 1,
    "type": 2,
    "bottom": 3,
    "top": 4,
    "blobs": 7,
    "convolution": 106,
    "inner_product": 117,
    "lrn": 118,
    "pooling": 121,
}

_LEGACY = {
    "name": 4,
    "type": 5,
    "bottom": 2,
    "top": 3,
    "blobs": 6,
    "convolution": 10,
    "inner_product": 17,
    "lrn": 18,
    "pooling": 19,
}

_PARAMETER_FIELDS = {
    "convolution": _CONVOLUTION_FIELDS,
    "inner_product": _INNER_PRODUCT_FIELDS,
    "lrn": _LRN_FIELDS,
    "pooling": _POOLING_FIELDS,
}


def read_blob(data, span, layer_name):
    """A BlobProto as a float32 array viewing `data` (no copy), in its stated shape."""
    shape, legacy, values = None, {}, None
    for number, wire_type, value in _fields(data, *span):
        if number == 7 and wire_type == 2:  # shape: BlobShape, dim = 1 (packed int64)
            shape = []
            for dim_number, dim_type, dim_value in _fields(data, *value):
                if dim_number == 1:
                    _extend_varints(shape, data, dim_type, dim_value)
        elif number in (1, 2, 3, 4):  # num, channels, height, width
            legacy[number] = _integer(wire_type, value)
        elif number in (5, 8):  # data (packed float), double_data (packed double)
            if wire_type != 2:
                raise UsageError(
                    f"layer {layer_name}: blob values not in packed form, which Caffe never writes"
                )
            start, end = value
            dtype = np.dtype("<f4" if number == 5 else "<f8")
            if (end - start) % dtype.itemsize:
                raise UsageError(
                    f"layer {layer_name}: a blob's data is not a whole number "
                    f"of values: a damaged file"
                )
            values = np.frombuffer(data, dtype, (end - start) // dtype.itemsize, start)
    if shape is None:
        shape = [legacy.get(number, 1) for number in (1, 2, 3, 4)] if legacy else []
    if values is None:
        values = np.zeros(0, np.float32)
    if math.prod(shape) != values.size or any(size > len(data) for size in shape):
        raise UsageError(
            f"layer {layer_name}: a blob of shape {tuple(shape)} holds "
            f"{values.size} values: the file is truncated or damaged"
        )
    return values.reshape(shape)


def _layer(data, span, fields):
    name, kind, bottoms, tops, blobs, parameters = None, None, [], [], [], {}
    blob_spans, parameter_spans = [], {}
    for number, wire_type, value in _fields(data, *span):
        if number == fields["name"] and wire_type == 2:
            name = _string(data, value)
        elif number == fields["type"]:
            if fields is _LEGACY:
                if wire_type != 0:
                    raise UsageError("a layer type that is not an enum: not a Caffe model")
                kind = V1_TYPES.get(value) or V1_TYPE_NAMES.get(value) or f"V1 type {value}"
            elif wire_type == 2:
                kind = _string(data, value)
        elif number == fields["bottom"] and wire_type == 2:
            bottoms.append(_string(data, value))
        elif number == fields["top"] and wire_type == 2:
            tops.append(_string(data, value))
        elif number == fields["blobs"] and wire_type == 2:
            blob_spans.append(value)
        elif fields is _LEGACY and number == 1 and wire_type == 2:
            raise UsageError(
                "a V0 Caffe model (2013 format): upgrade it first with Caffe's "
                "upgrade_net_proto_binary"
            )
        else:
            for parameter, parameter_number in fields.items():
                if parameter in _PARAMETER_FIELDS and number == parameter_number:
                    if wire_type != 2:
                        raise UsageError("a malformed layer parameter: not a Caffe model")
                    parameter_spans[parameter] = value
    name = name or "(unnamed)"
    blobs = [read_blob(data, blob_span, name) for blob_span in blob_spans]
    for parameter, parameter_span in parameter_spans.items():
        parameters = _message(data, parameter_span, _PARAMETER_FIELDS[parameter])
    return {
        "name": name,
        "type": kind or "(no type)",
        "bottom": bottoms,
        "top": tops,
        "blobs": blobs,
        "parameters": parameters,
    }


def read_caffemodel(data):
    """The layers of a binary NetParameter (bytes or a buffer), in file order: dicts with
    name, type, bottom, top, blobs (float arrays viewing `data`) and parameters. Returns
    (layers, encoding), encoding "layer" (current) or "layers" (legacy V1)."""
    current, legacy = [], []
    for number, wire_type, value in _fields(data, 0, len(data)):
        if number == 100 and wire_type == 2:
            current.append(value)
        elif number == 2 and wire_type == 2:
            legacy.append(value)
    if current and legacy:
        raise UsageError(
            "the file mixes Caffe's two layer encodings (layer and layers): not a model Caffe wrote"
        )
    if not current and not legacy:
        raise UsageError("no layers found: not a Caffe .caffemodel (a binary NetParameter)")
    fields, spans = (_CURRENT, current) if current else (_LEGACY, legacy)
    encoding = CAFFE_CURRENT if current else CAFFE_LEGACY
    return [_layer(data, span, fields) for span in spans], encoding


# === Either file, opened once ===


@contextlib.contextmanager
def read_weights_file(path):
    """Opens a weights file once, reads its format from its first bytes and reads it:
    yields (kind, contents, release). kind NPY: contents {layer: (weights, biases)} as
    caffe-tensorflow wrote them. kind CAFFE_CURRENT or CAFFE_LEGACY (the .caffemodel's
    encoding): contents read_caffemodel's layers, whose blobs view a read-only mapping of the
    file (no copy of 233 MB) that stays open until the block ends; release() drops the pages
    of it read so far from the process's memory (they stay in the page cache)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UsageError("the file does not exist")
    if not path.is_file():
        raise UsageError("not a file")
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise UsageError("the file is empty")
        head = handle.read(len(NPY_MAGIC))
        handle.seek(0)
        if head == NPY_MAGIC:
            yield NPY, read_npy_weights(handle), lambda: None
            return
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    layers = None
    try:
        layers, encoding = read_caffemodel(mapping)
        yield encoding, layers, lambda: mapping.madvise(mmap.MADV_DONTNEED)
    finally:
        layers = None  # its blobs view the mapping
        try:
            mapping.close()
        except BufferError:  # an array still views it: the mapping closes when freed
            pass
