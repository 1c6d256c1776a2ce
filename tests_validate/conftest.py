"""Real records for the data-validation tests: synthetic JPEGs converted by the project's own
converter (in the main environment, as users run it), then statistics and a schema computed
once per session by data/validate_data.py."""

import importlib.util
import os
import pathlib
import shutil
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
CLASS_NAMES = ["circle", "square", "star", "triangle"]


def load_script():
    """data/validate_data.py as a module, to call its main() in this process (each
    subprocess would pay TensorFlow's and Beam's start-up again)."""
    spec = importlib.util.spec_from_file_location(
        "validate_data", REPO_ROOT / "data" / "validate_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate_data():
    return load_script()


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def converted_records(tmp_path_factory):
    """4 classes x 24 synthetic images -> 72 training and 24 validation examples."""
    assert MAIN_PYTHON.exists(), "run `make env` to create the main environment"
    root = tmp_path_factory.mktemp("converted")
    for script, arguments in [
        (
            "data/make_synthetic.py",
            [
                "--output_dir",
                root / "images",
                "--num_classes",
                "4",
                "--images_per_class",
                "24",
                "--seed",
                "1",
            ],
        ),
        (
            "data/build_tfrecords.py",
            [
                "--input_dir",
                root / "images",
                "--output_dir",
                root / "records",
                "--val_fraction",
                "0.25",
                "--num_shards",
                "2",
                "--workers",
                "1",
                "--no_progress",
            ],
        ),
    ]:
        result = subprocess.run(
            [str(MAIN_PYTHON), script, *map(str, arguments)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "records" / "labels.txt").read_text().split() == CLASS_NAMES
    return root / "records"


@pytest.fixture(scope="session")
def profiled_records(converted_records, tmp_path_factory, validate_data):
    """The converted records with training statistics and a curated schema."""
    folder = tmp_path_factory.mktemp("profiled") / "records"
    shutil.copytree(converted_records, folder)
    assert validate_data.main(["stats", "--data_dir", str(folder)]) == 0
    assert validate_data.main(["schema", "--data_dir", str(folder)]) == 0
    return folder
