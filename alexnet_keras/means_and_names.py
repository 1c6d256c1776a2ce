"""Caffe's mean files and ILSVRC's class names, as import_weights.py reads them: the mean
from `ilsvrc_2012_mean.npy` (its header by alexnet_keras/npy_weights.py, no pickle) or a
`.binaryproto` (a BlobProto, by alexnet_keras/weight_files.py), the names from
`synset_words.txt`."""

import io
import math
import pathlib

import numpy as np

from alexnet_keras.npy_weights import NPY_MAGIC, read_npy_header
from alexnet_keras.weight_files import read_blob
from alexnet_keras_base.errors import UsageError


def read_mean_file(path):
    """A B,G,R mean from Caffe's ilsvrc_2012_mean.npy (read without pickle) or a
    .binaryproto (a BlobProto): per-pixel means (3 x H x W) averaged per channel."""
    path = pathlib.Path(path)
    data = _read_bytes(path, "--mean_file")
    try:
        mean = (
            _npy_array(data)
            if data.startswith(NPY_MAGIC)
            else read_blob(data, (0, len(data)), "mean")
        )
    except UsageError as error:
        raise UsageError(f"--mean_file {path}: {error}") from None
    mean = np.asarray(mean, np.float64)
    while mean.ndim > 1 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim == 1 and mean.shape == (3,):
        values = mean
    elif mean.ndim == 3 and mean.shape[0] == 3:
        values = mean.mean(axis=(1, 2))
    else:
        raise UsageError(
            f"--mean_file {path}: a mean of shape {mean.shape}; expected 3 "
            f"values or Caffe's 3 x H x W per-pixel mean (B, G, R)"
        )
    if not np.all(np.isfinite(values)):
        raise UsageError(f"--mean_file {path}: the mean is not finite")
    return tuple(float(value) for value in values)


def _npy_array(data):
    """A numeric .npy array (Caffe's ilsvrc_2012_mean.npy), by its header, without pickle."""
    handle = io.BytesIO(data)
    dtype, fortran_order, shape = read_npy_header(handle)
    if dtype.kind not in "fiu":
        raise UsageError(f"not a numeric .npy array: an array of {dtype}")
    count = math.prod(shape)
    if len(data) - handle.tell() < count * dtype.itemsize:
        raise UsageError(f"the .npy array of shape {shape} is truncated")
    array = np.frombuffer(data, dtype, count, handle.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def read_class_names(path, num_classes):
    """One name per line, in the order of the model's outputs (ILSVRC's synset_words.txt:
    `n01440764 tench, Tinca tinca`)."""
    path = pathlib.Path(path)
    try:
        names = [
            line.strip()
            for line in _read_bytes(path, "--class_names").decode().splitlines()
            if line.strip()
        ]
    except UnicodeDecodeError:
        raise UsageError(f"--class_names {path} is not UTF-8 text") from None
    if len(names) != num_classes:
        raise UsageError(
            f"--class_names {path} has {len(names)} names, the model has {num_classes} classes"
        )
    return names


def _read_bytes(path, flag):
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    return path.read_bytes()
