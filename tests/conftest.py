"""Shared test setup: two logical CPU devices, quiet logs, small helpers.

`make test` runs the tests in two processes (pytest-xdist, `--dist loadscope`: each module's
tests in one process, so its module fixtures are built once). The session fixtures that many
modules read are built once per run by whichever process needs them first (`once_per_run`).
"""

import fcntl
import pathlib
import shutil
import sys

import pytest

from alexnet_keras_base.quiet import NO_GPU, import_tensorflow_quietly, native_stderr_without

# Quietly (and with TF_CPP_MIN_LOG_LEVEL 1 unless set): pytest-xdist's controlling process
# loads this file too, outside pytest's capture. As the commands: TensorFlow with its BFC
# allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC), so a test trains as train.py does; the
# serving stand-in runs without it, as TF Serving does.
tf = import_tensorflow_quietly(find_devices=False)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The `disk` fixture: a small tmpfs of a test's own, to fill (tests/full_disk.py).
pytest_plugins = ("full_disk",)

# Two logical CPU devices stand in for the paper's two GPUs. This must happen before
# TensorFlow initialises its devices, so it lives here, at collection time.
with native_stderr_without(NO_GPU):
    _cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def python():
    """The interpreter running the tests, for subprocesses."""
    return sys.executable


def once_per_run(tmp_path_factory, name, build):
    """A folder that `build(folder)` fills once per test run, shared by the run's test
    processes: the first process to ask builds it under a lock, the others wait and reuse it.
    A build that failed is tried again by the next process that asks."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # a pytest-xdist worker's own folder
        root = root.parent  # the run's folder, which the controller made afresh
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """A small real dataset: synthetic JPEGs converted to TFRecords by the real converter.
    Shared: tests only read it."""
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    def build(root):
        make_synthetic_dataset(root / "images", num_classes=4, images_per_class=24, seed=1)
        convert(
            root / "images",
            root / "records",
            ConvertOptions(val_fraction=0.25, num_shards=4, workers=2),
            log=lambda message: None,
        )

    return once_per_run(tmp_path_factory, "synthetic", build) / "records"


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    """TensorFlow Serving's loader in a process of its own (tf_serving_standin.py)."""
    from tf_serving_standin import RUNNER, build_runner

    return once_per_run(tmp_path_factory, "runner", build_runner) / RUNNER


# Processes to start = slow: `make test-fast` leaves out every test that takes the `python`
# fixture (it runs the scripts in subprocesses) or the `runner` fixture (the C++ serving
# stand-in), besides the tests marked slow by hand (in-process training).
PROCESS_FIXTURES = {"python", "runner"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
