"""The command-line entry points of alexnet-keras: `train.py`, `evaluate.py`,
`data/build_tfrecords.py`, `data/make_synthetic.py`, `export/export_model.py` and
`import_weights.py` in a checkout, and the console scripts `alexnet-train`,
`alexnet-evaluate`, `alexnet-build-tfrecords`, `alexnet-make-synthetic`, `alexnet-export` and
`alexnet-import-weights` of an installed package call the same `main`.

Each module parses its arguments before importing TensorFlow, so `--help` and usage errors
answer at once; nothing here imports TensorFlow or `alexnet_keras` at import time. What the
commands need before TensorFlow lives here too, in the standard library only, and the library
imports it from here: the config and its presets (`config.py`), the errors that end a command
(`errors.py`), the folders on disk and the run's record (`layout.py`), atomic file writes
(`files.py`) and the data-validation report (`validation_report.py`).
"""

import contextlib
import functools
import os
import re
import sys
import tempfile

from alexnet_keras_cli.errors import CommandError

# What TensorFlow prints while it starts, on every run, that is not about the run: CUDA
# probing on machines without a GPU, CPU-instruction notes, oneDNN notes, factory
# registrations. Matched line by line; anything else is printed as it came.
_STARTUP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc"
    r"|To enable the following instructions:|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
    r"|TF-TRT Warning: Could not find TensorRT|cuda_executor\.cc.*NUMA node"
)
# What TensorFlow logs when it finds no GPU (CUDA's initialisation fails).
NO_GPU = re.compile(r"failed call to cuInit")
# Printed by TensorFlow's C++ code whenever a tf.distribute dataset's iterator is made: the
# per-device generator that MirroredStrategy's input uses cannot be rewritten by tf.data's
# graph optimizations, which tf.data notes; nothing the caller can change.
DISTRIBUTED_ITERATOR_NOTE = re.compile(
    r"dataset\.cc:\d+\] Input of GeneratorDatasetOp::Dataset will not be optimized because "
    r"the dataset does not implement the AsGraphDefInternal\(\) method")


@contextlib.contextmanager
def beam_imported_quietly():
    """Around importing Apache Beam: its base package warns through the root logger, on
    every import, about Google Cloud clients that only apache-beam[gcp] installs, none of
    which the prediction job uses."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def import_tensorflow_quietly(find_devices=True):
    """Imports TensorFlow and (with `find_devices`) lets it find its devices, with the
    process's standard error captured, then prints what it wrote except the start-up chatter.
    A failed cuInit on a machine where no GPU is found becomes one plain line. Returns the
    tensorflow module. The converter passes find_devices=False: it forks its decoding
    workers afterwards, before any device exists."""
    # INFO lines off (TensorFlow's own default prints them); warnings and errors stay.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # TensorFlow's default CPU allocator takes every large tensor (activations, gradients: up
    # to 151 MB for fc6's) as fresh pages from the kernel, which faults and zeroes them again
    # at every step; its BFC allocator keeps and reuses them (bench/allocator_speed.py).
    # Read when TensorFlow first allocates; a value set by the user wins.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    gpus = None  # read by the replay, after the block has set it
    with _native_stderr_captured(lambda text: _replay(text, no_gpu=gpus == [])):
        import tensorflow as tf

        if find_devices:
            gpus = tf.config.list_physical_devices("GPU")
    return tf


def command(*also):
    """Decorates a command's `main(argv) -> status`: a CommandError (alexnet_keras_cli.errors)
    is printed without a traceback and its exit_code returned; so is an error of the types in
    `also` (e.g. OSError for a command whose output could not be written), with status 2.
    Anything else is a bug and keeps its traceback."""

    def decorate(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except CommandError as error:
                print(f"{error.prefix}{error}", file=sys.stderr)
                return error.exit_code
            except also as error:
                print(f"error: {error}", file=sys.stderr)
                return 2

        return run

    return decorate


def native_stderr_without(pattern):
    """Runs the block with the process's standard error (file descriptor 2, where
    TensorFlow's C++ code logs) captured, then writes what it captured except the lines that
    match `pattern`. For short blocks that make TensorFlow print a known, useless line."""

    def replay(text):
        sys.stderr.writelines(line for line in text.splitlines(keepends=True)
                              if not pattern.search(line))
        sys.stderr.flush()

    return _native_stderr_captured(replay)


@contextlib.contextmanager
def _native_stderr_captured(replay):
    """Runs the block with file descriptor 2 redirected to a temporary file, then restores it
    and hands what was written to `replay(text)`, also when the block fails."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            replay(captured.read().decode(errors="replace"))


def _replay(text, no_gpu):
    said_no_gpu = False
    for line in text.splitlines(keepends=True):
        if _STARTUP_CHATTER.search(line):
            continue
        if no_gpu and NO_GPU.search(line):
            if not said_no_gpu:
                sys.stderr.write("no GPU found: running on the CPU\n")
                said_no_gpu = True
            continue
        sys.stderr.write(line)
    sys.stderr.flush()


def progress_bar_factory(unit, enabled=True, file=None):
    """A function (total, description) -> tqdm bar on `file` (standard error), or None when
    disabled or when it is not a terminal (logs get no bars)."""
    file = file or sys.stderr
    if not enabled or not file.isatty():
        return None
    from tqdm import tqdm

    def progress(total, description):
        return tqdm(total=total, desc=description, unit=unit, file=file, leave=False)

    return progress
