"""The command-line entry points of alexnet-keras: `train.py`, `evaluate.py`,
`data/build_tfrecords.py`, `data/make_synthetic.py` and `export/export_model.py` in a checkout,
and the console scripts `alexnet-train`, `alexnet-evaluate`, `alexnet-build-tfrecords`,
`alexnet-make-synthetic` and `alexnet-export` of an installed package call the same `main`.

Each module parses its arguments before importing TensorFlow, so `--help` and usage errors
answer at once; nothing here imports TensorFlow or `alexnet_keras` at import time. The
defaults below repeat a few of the library's constants for that reason; a test checks that
they agree.
"""

import os
import re
import sys
import tempfile

DEMO_DATASET_DIR = "datasets/synthetic"  # alexnet_keras.config.DEMO_DATASET_DIR
DEMO_RECORDS_DIR = "datasets/synthetic/records"  # alexnet_keras.config.DEMO_RECORDS_DIR
DEMO_MODEL_DIR = "runs/demo"  # alexnet_keras.config.DEMO_MODEL_DIR
PRESET_NAMES = ("demo", "finetune", "paper")  # sorted(alexnet_keras.config.PRESETS)
LR_SCHEDULES = ("plateau", "step", "cosine")  # alexnet_keras.config.LR_SCHEDULES
MIXED_PRECISION = ("off", "float16", "bfloat16")  # alexnet_keras.config.MIXED_PRECISION
CONVERTER_MAX_PIXELS = 89_478_485  # alexnet_keras.tfrecords.DEFAULT_MAX_PIXELS
SERVING_MAX_PIXELS = 50_000_000  # alexnet_keras.serving.DEFAULT_MAX_PIXELS
SYNTHETIC_CLASSES = 10  # len(alexnet_keras.synthetic.CLASS_NAMES)

# What TensorFlow prints while it starts, on every run, that is not about the run: CUDA
# probing on machines without a GPU, CPU-instruction notes, oneDNN notes, factory
# registrations. Matched line by line; anything else is printed as it came.
_STARTUP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc"
    r"|To enable the following instructions:|oneDNN custom operations are on"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
    r"|TF-TRT Warning: Could not find TensorRT|cuda_executor\.cc.*NUMA node"
)
_NO_GPU = re.compile(r"failed call to cuInit")


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
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        gpus = None
        try:
            import tensorflow as tf

            if find_devices:
                gpus = tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            _replay(captured.read().decode(errors="replace"), no_gpu=gpus == [])
    return tf


def _replay(text, no_gpu):
    said_no_gpu = False
    for line in text.splitlines(keepends=True):
        if _STARTUP_CHATTER.search(line):
            continue
        if no_gpu and _NO_GPU.search(line):
            if not said_no_gpu:
                sys.stderr.write("no GPU found: running on the CPU\n")
                said_no_gpu = True
            continue
        sys.stderr.write(line)
    sys.stderr.flush()


def progress_bar_factory(unit, enabled=True):
    """A function (total, description) -> tqdm bar on standard error, or None when disabled
    or when standard error is not a terminal (logs get no bars)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    def progress(total, description):
        return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False)

    return progress
