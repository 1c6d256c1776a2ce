"""train.py --require_validation reads the report data/validate_data.py leaves beside the
records (training never imports TFDV): unvalidated, failed and changed data are refused,
validated data trains."""

import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

# Validating the records runs TFDV's Beam pipeline in the validation environment's process.
pytestmark = pytest.mark.slow


def validate_data(repo_root, *arguments):
    python = repo_root / ".venv-validate" / "bin" / "python"
    assert python.exists(), "run `make env-validate` to create the validation environment"
    return subprocess.run(
        [str(python), "data/validate_data.py", *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def validated_records(synthetic_records, tmp_path_factory, repo_root):
    """The synthetic records after stats, schema and validation of both splits, all real."""
    folder = tmp_path_factory.mktemp("validated") / "records"
    shutil.copytree(synthetic_records, folder)
    for arguments in (
        ["stats"],
        ["schema"],
        ["validate", "--split", "train"],
        ["validate", "--split", "validation"],
    ):
        result = validate_data(repo_root, *arguments, "--data_dir", folder)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return folder


@pytest.fixture
def train_main(repo_root):
    sys.path.insert(0, str(repo_root))
    import train

    return train.main


def tiny_training(data_dir, model_dir):
    return [
        "--data_dir",
        str(data_dir),
        "--model_dir",
        str(model_dir),
        "--config",
        "demo",
        "--width_multiplier",
        "0.125",
        "--epochs",
        "1",
        "--global_batch_size",
        "8",
        "--shuffle_buffer",
        "64",
        "--warmup_epochs",
        "0",
        "--no_progress",
        "--require_validation",
    ]


def test_unvalidated_data_is_refused_with_the_command_to_run(
    synthetic_records, tmp_path, train_main, capsys
):
    assert train_main(tiny_training(synthetic_records, tmp_path / "model")) == 2
    error = capsys.readouterr().err
    assert "no data validation report for the train split" in error
    assert f"data/validate_data.py validate --data_dir {synthetic_records} --split train" in error
    assert not (tmp_path / "model").exists()


def test_failed_validation_is_refused(validated_records, tmp_path, repo_root, train_main, capsys):
    folder = tmp_path / "records"
    shutil.copytree(validated_records, folder)
    # One validation example with a label outside the classes, validated for real.
    shard = sorted(folder.glob("validation-*.tfrecord"))[0]
    records = list(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for index, record in enumerate(records):
            example = tf.train.Example.FromString(record)
            if index == 0:
                example.features.feature["image/class/label"].int64_list.value[0] = 99
            writer.write(example.SerializeToString())
    result = validate_data(repo_root, "validate", "--data_dir", folder)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]

    assert train_main(tiny_training(folder, tmp_path / "model")) == 2
    error = capsys.readouterr().err
    assert "validation of the validation split found 1 anomalies" in error
    assert "image/class/label: Out-of-range values" in error


def test_records_changed_after_validation_are_refused(
    validated_records, tmp_path, train_main, capsys
):
    folder = tmp_path / "records"
    shutil.copytree(validated_records, folder)
    sorted(folder.glob("train-*.tfrecord"))[-1].unlink()
    assert train_main(tiny_training(folder, tmp_path / "model")) == 2
    assert "train records in" in capsys.readouterr().err


def test_validated_data_trains(validated_records, tmp_path, train_main):
    assert train_main(tiny_training(validated_records, tmp_path / "model")) == 0
    assert (tmp_path / "model" / "alexnet.keras").exists()
