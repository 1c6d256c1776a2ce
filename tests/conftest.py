"""Shared test setup: two logical CPU devices, quiet logs, small helpers."""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two logical CPU devices stand in for the paper's two GPUs. This must happen before
# TensorFlow initialises its devices, so it lives here, at collection time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def python():
    """The interpreter running the tests, for subprocesses."""
    return sys.executable


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """A small real dataset: synthetic JPEGs converted to TFRecords by the real converter."""
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root / "images", num_classes=4, images_per_class=24, seed=1)
    convert(root / "images", root / "records",
            ConvertOptions(val_fraction=0.25, num_shards=4, workers=2), log=lambda message: None)
    return root / "records"


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    """TensorFlow Serving's loader in a process of its own (tf_serving_standin.py)."""
    from tf_serving_standin import build_runner

    return build_runner(tmp_path_factory.mktemp("runner"))


# Processes to start = slow: `make test-fast` leaves out every test that takes the `python`
# fixture (it runs the scripts in subprocesses) or the `runner` fixture (the C++ serving
# stand-in), besides the tests marked slow by hand (in-process training).
PROCESS_FIXTURES = {"python", "runner"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
