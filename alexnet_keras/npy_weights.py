"""caffe-tensorflow's `bvlc_alexnet.npy`, read without running it: numpy's `.npy` header by
a parser of our own, then the pickle it holds, checked opcode by opcode before anything is
unpickled, and unpickled into numpy arrays and nothing else.

numpy's own readers are not used on a stranger's file: its header parser fails on damaged
headers with exceptions other than ValueError (`tokenize.TokenError`, `TypeError`), and
`ndarray.__setstate__` trusts the shape a pickle states (an object array longer than its
list crashes the interpreter). Python's unpickler allocates what a length or memo index
claims before it reads a byte of it: both are checked against the file first.
"""

import ast
import io
import math
import pickle
import re
import struct

import numpy as np

from alexnet_keras_base.errors import UsageError

NPY_MAGIC = b"\x93NUMPY"
# numpy.lib.format's own limit on a header it reads without allow_pickle.
MAX_HEADER_SIZE = 10_000
# (struct format of the header's length, its encoding) for each format version numpy writes.
HEADER_FORMATS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
MAX_AXES = 32  # numpy 1's limit; Caffe's too (kMaxBlobAxes)
# bvlc_alexnet.npy's pickle, as caffe-tensorflow wrote it, has 743 opcodes: its 16 arrays,
# their dtypes and the dict and object array around them. The limit also bounds how deep
# the pickle can nest tuples, which Python hashes and compares recursively.
MAX_PICKLE_OPCODES = 20_000
# The dtypes an array of weights or the object array around them may have.
ARRAY_DTYPES = {"f2", "f4", "f8", "O", "O4", "O8"}


# === The header ===


def read_npy_header(handle):
    """The header of a .npy file (numpy.lib.format) from the start of `handle`:
    (dtype, fortran_order, shape); `handle` is left at the array's data."""
    start = handle.read(len(NPY_MAGIC) + 2)
    if len(start) < len(NPY_MAGIC) + 2 or not start.startswith(NPY_MAGIC):
        raise UsageError("not a .npy file: truncated in its first bytes")
    version = tuple(start[-2:])
    if version not in HEADER_FORMATS:
        raise UsageError(
            f"a .npy file of format version {version[0]}.{version[1]}, which numpy never "
            f"wrote: a damaged file"
        )
    length_format, encoding = HEADER_FORMATS[version]
    (length,) = struct.unpack(length_format, _read_exactly(handle, struct.calcsize(length_format)))
    if length > MAX_HEADER_SIZE:
        raise UsageError(f"a .npy header of {length:,} bytes, numpy's are short: a damaged file")
    try:
        text = _read_exactly(handle, length).decode(encoding)
        # Python 2 wrote some shapes' numbers as longs: (3L, 256L, 256L)
        header = ast.literal_eval(re.sub(r"(?<=\d)L\b", "", text))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        # literal_eval: SyntaxError, ValueError (malformed), TypeError (unhashable key),
        # MemoryError and RecursionError (nesting); decode: UnicodeDecodeError (a ValueError)
        raise UsageError("the .npy header is not numpy's dictionary: a damaged file") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise UsageError("the .npy header is not numpy's dictionary: a damaged file")
    shape, descr = header["shape"], header["descr"]
    if not _is_shape(shape) or not isinstance(header["fortran_order"], bool):
        raise UsageError(f"the .npy header states a shape {shape!r:.60}: a damaged file")
    try:
        if not isinstance(descr, str):
            raise TypeError(descr)
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise UsageError(f"the .npy header states a dtype {descr!r:.60}: a damaged file") from None
    return dtype, header["fortran_order"], shape


def _read_exactly(handle, size):
    data = handle.read(size)
    if len(data) < size:
        raise UsageError("the .npy file ends inside its header: truncated")
    return data


def _is_shape(shape):
    return (
        isinstance(shape, tuple)
        and len(shape) <= MAX_AXES
        and all(type(size) is int and size >= 0 for size in shape)
    )


# === The pickle stream, checked before it is unpickled ===

# The opcodes of a pickle of numpy arrays, dtypes, lists, tuples, dicts and strings
# (protocols 2 to 4), by the argument they read. Everything else (objects made from classes,
# extension codes, persistent ids, protocol 0's text) is refused.
_NO_ARGUMENT = {
    pickle.MARK, pickle.STOP, pickle.EMPTY_DICT, pickle.DICT, pickle.SETITEM, pickle.SETITEMS,
    pickle.EMPTY_LIST, pickle.LIST, pickle.APPEND, pickle.APPENDS, pickle.EMPTY_TUPLE,
    pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.NONE, pickle.NEWTRUE,
    pickle.NEWFALSE, pickle.REDUCE, pickle.BUILD, pickle.STACK_GLOBAL, pickle.MEMOIZE,
}  # fmt: skip
_FIXED = {  # opcode: its argument's size in bytes
    pickle.PROTO: 1, pickle.BININT: 4, pickle.BININT1: 1, pickle.BININT2: 2,
    pickle.BINFLOAT: 8, pickle.BINGET: 1, pickle.LONG_BINGET: 4,
}  # fmt: skip
_PUTS = {pickle.BINPUT: "<B", pickle.LONG_BINPUT: "<I"}  # opcode: its memo index
# opcode: the length before its bytes; FRAME's bytes are opcodes, read on
_COUNTED = {
    pickle.SHORT_BINSTRING: "<B", pickle.BINSTRING: "<i", pickle.SHORT_BINBYTES: "<B",
    pickle.BINBYTES: "<I", pickle.BINBYTES8: "<Q", pickle.SHORT_BINUNICODE: "<B",
    pickle.BINUNICODE: "<I", pickle.BINUNICODE8: "<Q", pickle.LONG1: "<B", pickle.FRAME: "<Q",
}  # fmt: skip
MAX_NAME = 100  # the longest module or name a GLOBAL may have


def refused_call(module, name):
    return UsageError(
        f"the pickle calls {module}.{name}, which a weights file has no need of: refused, "
        f"nothing was run"
    )


def check_pickle_stream(handle, allowed):
    """Reads the pickle at `handle`'s position opcode by opcode, running nothing: every
    opcode one a pickle of arrays uses, every length within the file, every memo index one
    of the objects memoized so far, every GLOBAL in `allowed`. Leaves `handle` where it was."""
    start = handle.tell()
    end = handle.seek(0, io.SEEK_END)
    handle.seek(start)
    memoized = 0
    for _ in range(MAX_PICKLE_OPCODES):
        code = _argument(handle, 1)
        if code == pickle.STOP:
            handle.seek(start)
            return
        if code == pickle.GLOBAL:
            module, name = _line(handle), _line(handle)
            if (module, name) not in allowed:
                raise refused_call(module, name)
        elif code in _COUNTED:
            length = _number(handle, _COUNTED[code])
            if length < 0 or length > end - handle.tell():
                raise UsageError(
                    f"the pickle in the .npy file holds {length:,} bytes where "
                    f"{end - handle.tell():,} remain: truncated or damaged"
                )
            if code != pickle.FRAME:
                handle.seek(length, io.SEEK_CUR)
        elif code in _PUTS:
            index = _number(handle, _PUTS[code])
            if index > memoized:
                raise UsageError(
                    f"the pickle in the .npy file memoizes an object as number {index:,} when "
                    f"{memoized} are memoized: a damaged file"
                )
            memoized += 1
        elif code in _FIXED:
            _argument(handle, _FIXED[code])
        elif code in _NO_ARGUMENT:
            memoized += code == pickle.MEMOIZE
        else:
            raise UsageError(
                f"the pickle in the .npy file holds opcode {code!r} (byte {handle.tell() - 1}), "
                f"which a pickle of arrays never holds: a damaged file, or not a weights file"
            )
    raise UsageError(
        f"the pickle in the .npy file holds more than {MAX_PICKLE_OPCODES:,} opcodes: "
        f"not a pickle of arrays"
    )


def _argument(handle, size):
    data = handle.read(size)
    if len(data) < size:
        raise UsageError("the pickle in the .npy file ends before its STOP: truncated")
    return data


def _number(handle, size_format):
    return struct.unpack(size_format, _argument(handle, struct.calcsize(size_format)))[0]


def _line(handle):
    line = handle.readline(MAX_NAME)
    if not line.endswith(b"\n"):
        raise UsageError("the pickle in the .npy file names a global that is not a name")
    return line[:-1].decode("latin1")


# === Unpickling into arrays ===


class _Dtype:
    """numpy.dtype(descr, align, copy) and its __setstate__ (the byte order), for the dtypes
    of ARRAY_DTYPES only."""

    def __init__(self, descr, align=False, copy=False):
        descr = descr.decode("latin1") if isinstance(descr, bytes) else descr
        if descr not in ARRAY_DTYPES:
            raise UsageError(f"the pickle makes an array of dtype {_shown(descr)}, not of weights")
        self.dtype = np.dtype(descr)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, element size, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or state[2:5] != (None,) * 3:
            raise UsageError("the pickle makes a structured dtype, not one of weights")
        byte_order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if byte_order not in ("<", ">", "|", "="):
            raise UsageError(f"the pickle makes a dtype of byte order {_shown(byte_order)}")
        self.dtype = self.dtype.newbyteorder(byte_order)


class _Array:
    """numpy's _reconstruct(ndarray, (0,), b"b") and ndarray.__setstate__: the array made
    with np.frombuffer from the pickle's bytes (no copy), once their size is its shape's."""

    def __init__(self):
        self.array = self.items = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 4:  # numpy's state before its version
            state = (1, *state)
        if not isinstance(state, tuple) or len(state) != 5:
            raise UsageError("the pickle holds an array without numpy's state")
        _, shape, dtype, fortran_order, data = state
        if not _is_shape(shape) or not isinstance(dtype, _Dtype):
            raise UsageError("the pickle holds an array whose shape is not a tuple of sizes")
        count = math.prod(shape)
        if dtype.dtype.hasobject:  # its items, in a list
            if not isinstance(data, list) or len(data) != count or count != 1:
                raise UsageError("the pickle holds an array of objects other than one dict")
            self.items = data
            return
        if not isinstance(data, bytes) or len(data) != count * dtype.dtype.itemsize:
            raise UsageError(
                f"the pickle holds an array of shape {shape} whose data is not "
                f"{count:,} values: truncated or damaged"
            )
        array = np.frombuffer(data, dtype.dtype, count)
        self.array = array.reshape(shape, order="F" if fortran_order else "C")


def _reconstruct(ndarray, subtype, shape, typecode):
    if subtype is not ndarray or shape != (0,) or typecode not in (b"b", "b"):
        raise UsageError("the pickle makes an array other than numpy's way: a damaged file")
    return _Array()


def _encode_latin1(text, encoding="latin1"):
    # Python 3's protocol-2 pickles write bytes as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UsageError(f"the pickle encodes bytes as {_shown(encoding)}: not a numpy pickle")
    return text.encode("latin1")


_RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
ALLOWED_GLOBALS = _RECONSTRUCT | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _WeightsUnpickler(pickle.Unpickler):
    """Makes _Array and _Dtype where the pickle names numpy's, and refuses every other
    callable. Each callable it hands out is made for this pickle alone, so that a BUILD on
    it changes nothing beyond this load."""

    def __init__(self, handle):
        # Python 2 str (the arrays' data, the keys) as bytes: the arrays view them.
        super().__init__(handle, encoding="bytes")
        self._ndarray = object()  # numpy.ndarray, only ever an argument of _reconstruct

    def find_class(self, module, name):
        if (module, name) in _RECONSTRUCT:
            return lambda *arguments: _reconstruct(self._ndarray, *arguments)
        if (module, name) == ("numpy", "ndarray"):
            return self._ndarray
        if (module, name) == ("numpy", "dtype"):
            return lambda *arguments: _Dtype(*arguments)
        if (module, name) == ("_codecs", "encode"):
            return lambda *arguments: _encode_latin1(*arguments)
        raise refused_call(module, name)


def read_npy_weights(handle):
    """caffe-tensorflow's .npy from the start of `handle`: {layer: (weights, biases)}, from
    {layer: [weights, biases]} or {layer: {"weights", "biases"}}, without running any code
    the file names."""
    dtype, _, shape = read_npy_header(handle)
    if dtype != np.dtype(object) or shape != ():
        raise UsageError(
            f"a .npy array of {dtype} {shape}, not the pickled dict of bvlc_alexnet.npy"
        )
    check_pickle_stream(handle, ALLOWED_GLOBALS)
    try:
        loaded = _WeightsUnpickler(handle).load()
    except UsageError:
        raise
    except Exception as error:  # a damaged pickle fails in many ways
        raise UsageError(
            f"the pickle in the .npy file cannot be read ({error}): truncated or damaged"
        ) from None
    if isinstance(loaded, _Array):
        loaded = loaded.items[0] if loaded.items else loaded.array
    if not isinstance(loaded, dict):
        raise UsageError(
            f"the .npy file holds a {type(loaded).__name__}, not bvlc_alexnet's dict of layers"
        )
    weights = {}
    for name, value in loaded.items():
        name = _text(name)
        if isinstance(value, dict):
            value = {_text(key): item for key, item in value.items()}
            value = [value.get("weights"), value.get("biases")]
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(item, _Array) and item.array is not None for item in value)
        ):
            raise UsageError(f"layer {name}: not a pair of arrays (weights, biases)")
        weights[name] = (value[0].array, value[1].array)
    return weights


def _text(key):
    if not isinstance(key, (str, bytes)):
        raise UsageError(f"the .npy file names a layer with a {type(key).__name__}, not text")
    return key.decode("latin1") if isinstance(key, bytes) else key


def _shown(value):
    """A value from the file, for a message: a short string as itself, else its type (the
    repr of a deep structure would recurse)."""
    return f"{value!r:.40}" if isinstance(value, (str, bytes)) else type(value).__name__
