"""Quiet TensorFlow: what its C++ code prints on standard error while it starts, and while a
few known operations run, that says nothing about the run, held back; everything else is
printed as it came. Standard library only: the commands import TensorFlow through
`import_tensorflow_quietly` after parsing their flags."""

import contextlib
import os
import re
import sys
import tempfile

from alexnet_keras_base.disk_full import NO_SPACE, QUOTA_USED_UP, is_disk_full

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
    r"the dataset does not implement the AsGraphDefInternal\(\) method"
)

# What TensorFlow's C++ code logs when an op (SaveV2, of a checkpoint or an export; a summary
# writer's flush) finds the disk full, before the error that a DiskFull then reports in one
# line.
DISK_FULL_LOGS = re.compile(
    rf"(op_kernel|local_rendezvous)\.cc:\d+\].*({NO_SPACE}|{QUOTA_USED_UP})"
)


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


@contextlib.contextmanager
def beam_worker_logs_without_disk_full():
    """Around running a Beam pipeline in this process: Beam logs a bundle that failed, with
    its traceback, before the job's error reaches the caller; for a full disk, which the
    caller reports in one line, that log is held back."""
    import logging

    def without_disk_full(record):
        return not (record.exc_info and is_disk_full(record.exc_info[1]))

    worker_log = logging.getLogger("apache_beam.runners.common")
    worker_log.addFilter(without_disk_full)
    try:
        yield
    finally:
        worker_log.removeFilter(without_disk_full)


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


def native_stderr_without(pattern):
    """Runs the block with the process's standard error (file descriptor 2, where
    TensorFlow's C++ code logs) captured, then writes what it captured except the entries
    that match `pattern`: a matching line and the tab-indented lines that continue it (a
    status of several lines). For short blocks that make TensorFlow print a known, useless
    entry."""

    def replay(text):
        dropping = False
        for line in text.splitlines(keepends=True):
            dropping = bool(pattern.search(line)) or (dropping and line.startswith("\t"))
            if not dropping:
                sys.stderr.write(line)
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
