"""Damaged weight files: a seeded fuzz of a bvlc_alexnet `.caffemodel`, a `bvlc_alexnet.npy`
and Caffe's two mean files (structural bytes, truncations, byte flips), and pickles that name
code to run. Each file is read or refused with a UsageError: never another exception, never
longer than SECONDS_PER_FILE, never more memory than a bound relative to its size
(tracemalloc, which numpy's allocations report to), never code run from the pickle.

Most files go through the reading and checking layers and the conversion to our layouts
(`caffe_weights.checked_weights`, `to_keras_weights`); every FULL_IMPORT_EVERY-th goes the
whole way through `caffe_weights.import_weights`, model and file included."""

import contextlib
import io
import os
import pickle
import random
import signal
import struct
import time
import tracemalloc

import numpy as np
import pytest

from alexnet_keras import caffe_weights, means_and_names
from alexnet_keras_base.errors import UsageError
from alexnet_keras_cli import import_weights as import_weights_cli
from caffe_files import random_weights, write_caffemodel, write_npy
from file_mutations import (
    caffemodel_mutations,
    encode_varint,
    mean_mutations,
    npy_mutations,
    pickle_landmarks,
    replace,
)

SEED = 1729
WIDTH = 0.0625  # the narrowest bvlc_alexnet the model builds: files of 0.9 MB
NUM_CLASSES = 4
MUTATIONS = 300  # of each weights file; 60 of each mean file
FULL_IMPORT_EVERY = 25
SECONDS_PER_FILE = 2.0  # of CPU time; reading takes milliseconds
FULL_IMPORT_SECONDS = 30.0
MEMORY_PER_FILE_BYTE = 3  # traced peak, beyond MEMORY_SLACK
MEMORY_SLACK = 2_000_000
# === Reading a file under bounds of time and memory ===


class _TooSlow(BaseException):  # not an Exception: no reader's `except Exception` takes it
    pass


def _too_slow(signum, frame):
    raise _TooSlow()


@contextlib.contextmanager
def _time_bound(seconds):
    """Interrupts the block after `seconds` of this process's CPU time (ITIMER_PROF, SIGPROF):
    a reader that loops is caught, and a machine busy with other tests' processes does not
    stretch the bound as it stretches the wall clock. pytest-timeout's wall-clock alarm
    (SIGALRM) stays armed beside it for a reader that waits."""
    previous_handler = signal.signal(signal.SIGPROF, _too_slow)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous_handler)


def read_and_convert(path):
    with caffe_weights.checked_weights(path, WIDTH, NUM_CLASSES) as (_, weights, _):
        caffe_weights.to_keras_weights(weights)


def outcome(read, path, seconds=SECONDS_PER_FILE, measure_memory=True):
    """ "read" or "refused", or what went wrong."""
    size = path.stat().st_size
    if measure_memory:
        tracemalloc.start()
    try:
        with _time_bound(seconds):
            read(path)
        result = "read"
    except UsageError:
        result = "refused"
    except _TooSlow:
        return f"still reading after {seconds} s of CPU time"
    except Exception as error:
        return f"{type(error).__module__}.{type(error).__name__}: {str(error)[:200]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if peak > MEMORY_PER_FILE_BYTE * size + MEMORY_SLACK:
        return f"{result}, but {peak:,} bytes at the peak for a file of {size:,}"
    return result


def imported(path, output):
    """caffe_weights.import_weights' library entry, as the command calls it."""

    def read(path):
        caffe_weights.import_weights(path, output, width_multiplier=WIDTH, num_classes=NUM_CLASSES)

    result = outcome(read, path, FULL_IMPORT_SECONDS, measure_memory=False)
    if (result == "read") != output.exists():
        return f"{result}, and the model {'not ' * (result == 'read')}written"
    if len(list(output.parent.iterdir())) > output.exists():
        return f"{result}, and a temporary file left beside the model"
    output.unlink(missing_ok=True)
    return result


def fuzz(mutations, folder, read, full_import=False):
    """{mutation class: {outcome: count}} and the mutations that neither read nor refused."""
    outcomes, failures = {}, []
    for index, (kind, description, data) in enumerate(mutations):
        path = folder / f"mutated_{index}"
        path.write_bytes(data)
        if full_import and index % FULL_IMPORT_EVERY == 0:
            result = imported(path, folder / "imported" / "model.keras")
            kind = "whole import"
        else:
            result = outcome(read, path)
        counts = outcomes.setdefault(kind, {})
        counts[result if result in ("read", "refused") else "failed"] = counts.get(result, 0) + 1
        if result not in ("read", "refused"):
            failures.append(f"{kind}: {description}: {result}")
        path.unlink()
    return outcomes, failures


# === The files ===


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("originals")
    weights = random_weights(WIDTH, NUM_CLASSES, seed=4)
    per_pixel = np.random.default_rng(4).uniform(90, 130, (3, 6, 6)).astype(np.float32)
    np.save(folder / "mean.npy", per_pixel)
    blob = b"".join(bytes([number << 3, value]) for number, value in ((2, 3), (3, 6), (4, 6)))
    payload = per_pixel.astype("<f4").tobytes()
    blob += bytes([5 << 3 | 2]) + encode_varint(len(payload)) + payload
    (folder / "mean.binaryproto").write_bytes(blob)
    return {
        "caffemodel": write_caffemodel(folder / "bvlc_alexnet.caffemodel", weights).read_bytes(),
        "npy": write_npy(folder / "bvlc_alexnet.npy", weights).read_bytes(),
        "mean.npy": (folder / "mean.npy").read_bytes(),
        "mean.binaryproto": blob,
    }


@pytest.mark.parametrize(
    "kind, mutations",
    [("caffemodel", caffemodel_mutations), ("npy", npy_mutations)],
)
def test_damaged_weight_files_are_read_or_refused(kind, mutations, originals, tmp_path):
    (tmp_path / "imported").mkdir()
    original = tmp_path / f"bvlc_alexnet.{kind}"
    original.write_bytes(originals[kind])
    assert outcome(read_and_convert, original) == "read"
    assert imported(original, tmp_path / "imported" / "model.keras") == "read"
    rng = random.Random(f"{SEED} {kind}")
    outcomes, failures = fuzz(
        mutations(originals[kind], rng, MUTATIONS), tmp_path, read_and_convert, True
    )
    assert not failures, "\n".join(failures)
    # Each class of mutation was refused at least once, and the whole import ran both ways.
    # Every class of mutation was refused at times; some files were read, and imported.
    assert all(counts.get("refused") for counts in outcomes.values()), outcomes
    assert sum(counts.get("read", 0) for counts in outcomes.values()) > 10, outcomes
    assert outcomes["whole import"].get("read"), outcomes


def test_damaged_mean_files_are_read_or_refused(originals, tmp_path):
    for kind in ("mean.npy", "mean.binaryproto"):
        rng = random.Random(f"{SEED} {kind}")
        outcomes, failures = fuzz(
            mean_mutations(originals[kind], rng, 60), tmp_path, means_and_names.read_mean_file
        )
        assert not failures, "\n".join(failures)


# === Files made to do harm ===


class _Calls:
    """Pickled as a call of `function` on `argument`: what unpickling would run."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


class _ArrayState:
    """Pickled as numpy pickles an array (numpy's _reconstruct, then BUILD with `state`)."""

    def __init__(self, state, shape=(0,)):
        self.state, self.shape = state, shape

    def __reduce__(self):
        reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, where it lives
        return reconstruct, (np.ndarray, self.shape, b"b"), self.state


def _npy(pickled):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, np.lib.format.header_data_from_array_1_0(np.empty((), object))
    )
    return header.getvalue() + pickled


def _field(number, payload):
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _caffemodel_blob(blob):
    """A .caffemodel of one layer, conv1, holding `blob` (a BlobProto's bytes)."""
    return _field(100, _field(1, b"conv1") + _field(2, b"Convolution") + _field(7, blob))


def _with_first(data, opcode_name, value):
    """The .npy `data` with the 4-byte argument of its first `opcode_name` set to `value`."""
    for name, position, _ in pickle_landmarks(data, data.index(b"\n") + 1):
        if name == opcode_name:
            return replace(data, (position + 1, position + 5), struct.pack("<I", value))
    raise AssertionError(opcode_name)


def _with_header(data, old, new):
    """The .npy `data` with `old` replaced by `new` in its header, padded as before."""
    header_end = data.index(b"\n")
    header = data[:header_end].replace(old, new)
    assert new in header and len(header) >= header_end - 50
    return header[:header_end].ljust(header_end) + data[header_end:]


def harmful_files(originals, marker):
    """{case: (the file's bytes, its reader)}: each must be refused, within the bounds."""
    command = f"touch {marker}"
    python = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    npy, mean = originals["npy"], originals["mean.npy"]
    # fc6's weights, (out, conv5's channels * 6 * 6) floats: data (5), packed
    fc6_data = b"\x2a" + encode_varint(4 * int(4096 * WIDTH) * int(256 * WIDTH) * 36)
    cases = {
        "os.system by GLOBAL": _npy(pickle.dumps(_Calls(os.system, command), protocol=2)),
        "builtins.eval by STACK_GLOBAL": _npy(pickle.dumps(_Calls(eval, python), protocol=4)),
        "builtins.exec by GLOBAL, inside the dict of weights": _npy(
            pickle.dumps({"conv1": [np.zeros(3, np.float32), _Calls(exec, python)]}, protocol=2)
        ),
        "a string claiming 2**31 - 1 bytes": _with_first(npy, "BINSTRING", 2**31 - 1),
        "a memo index of 2**26": _with_first(npy, "LONG_BINPUT", 2**26),
        "bytes claiming 2**60 bytes": _npy(b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"."),
        "a frame claiming 2**60 bytes": _npy(b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"."),
        "an object array longer than its list": _npy(
            pickle.dumps(_ArrayState((1, (1000,), np.dtype(object), False, [])), protocol=2)
        ),
        "an array made with 2**30 bytes": _npy(pickle.dumps(_ArrayState(None, (2**30,)), 2)),
        "a layer named by a tuple nested 19,000 deep": _npy(
            b"\x80\x02}N" + b"\x85" * 19_000 + b"]s."  # {((((None,),),)...): []}
        ),
        "a header whose brackets never close": _with_header(npy, b"()", b"((a, }"),
        "a header with an unhashable key": _with_header(npy, b"()", b"{[]: 1}"),
        "a header of format version 9.9": npy[:6] + b"\x09\x09" + npy[8:],
        "a blob's data as its height": originals["caffemodel"].replace(
            fc6_data, b"\x1a" + fc6_data[1:]
        ),
        "an empty packed number": _caffemodel_blob(_field(1, b"")),
        "blob dimensions whose product is 2**64": _caffemodel_blob(
            _field(7, _field(1, encode_varint(2**32) * 2))
        ),
        "a mean whose brackets never close": _with_header(mean, b"(3, 6, 6)", b"((a, }"),
        "a mean of 2**30 values": _with_header(mean, b"(3, 6, 6)", b"(1073741824,)"),
    }
    return {
        case: (
            data,
            means_and_names.read_mean_file if case.startswith("a mean") else read_and_convert,
        )
        for case, data in cases.items()
    }


def test_files_made_to_do_harm_are_refused_and_run_nothing(originals, tmp_path):
    marker = tmp_path / "ran"
    failures = []
    for case, (data, read) in harmful_files(originals, marker).items():
        path = tmp_path / "harmful"
        path.write_bytes(data)
        result = outcome(read, path)
        if result != "refused":
            failures.append(f"{case}: {result}")
        if marker.exists():
            failures.append(f"{case}: the pickle's code ran")
            marker.unlink()
    assert not failures, "\n".join(failures)


def test_the_command_refuses_a_damaged_file_in_one_line_naming_it(originals, tmp_path, capsys):
    for case in ("a header whose brackets never close", "an empty packed number"):
        path = tmp_path / "bvlc_alexnet"
        path.write_bytes(harmful_files(originals, tmp_path / "ran")[case][0])
        output = tmp_path / "out.keras"
        assert import_weights_cli.main(["--weights", str(path), "--output", str(output)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {path}: ") and error.count("\n") == 1, error
        assert not output.exists()


def test_the_bounds_can_fail(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(bytes(1000))

    def hangs(path):
        while True:
            pass

    def allocates(path):
        return np.ones(MEMORY_SLACK + 10_000, np.uint8)

    def fails(path):
        return {}[path]

    assert outcome(hangs, path, seconds=0.2) == "still reading after 0.2 s of CPU time"
    # A reader held up by a busy machine spends little CPU time of its own: not stopped.
    assert outcome(lambda path: time.sleep(0.5), path, seconds=0.2) == "read"
    assert outcome(allocates, path).startswith("read, but ")
    assert outcome(fails, path).startswith("builtins.KeyError")
