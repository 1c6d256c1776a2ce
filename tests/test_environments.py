"""Both pinned environments exist, import, and do their job."""

import os
import shutil
import subprocess
import textwrap

import keras
import pytest
import tensorflow as tf


def pinned_version(requirements_file, package):
    for line in requirements_file.read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{package} is not pinned in {requirements_file.name}")


def test_main_environment_matches_the_pins(repo_root):
    requirements = repo_root / "requirements.txt"
    assert tf.__version__ == pinned_version(requirements, "tensorflow")
    assert keras.__version__ == pinned_version(requirements, "keras")
    # Every line that names a package pins it exactly.
    for line in requirements.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert "==" in line, line


def test_beam_runs_beside_tensorflow_with_the_pinned_protobuf(repo_root):
    """apache-beam 2.78 wants protobuf < 7; TensorFlow 2.21 and tensorflow-serving-api run
    with the protobuf 6 it allows (the prediction job on Beam: tests/test_beam_prediction.py)."""
    from google import protobuf
    from tensorflow_serving.apis import predict_pb2

    from alexnet_keras_base.quiet import beam_imported_quietly

    with beam_imported_quietly():
        import apache_beam

    requirements = repo_root / "requirements.txt"
    assert apache_beam.__version__ == pinned_version(requirements, "apache-beam")
    assert protobuf.__version__ == pinned_version(requirements, "protobuf")
    assert int(protobuf.__version__.split(".")[0]) < 7
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "alexnet"
    assert predict_pb2.PredictRequest.FromString(request.SerializeToString()) == request


def test_no_tensorflow_addons_and_no_tensorflow_cpu(repo_root):
    for name in ("requirements.txt", "requirements-validate.txt"):
        text = (repo_root / name).read_text()
        assert "tensorflow-addons" not in text
        assert "\ntensorflow-cpu==" not in text


@pytest.mark.slow
def test_validation_environment_computes_statistics(repo_root, tmp_path):
    """TFDV, in its own environment, reads a real TFRecord file written here."""
    records = tmp_path / "tiny.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for label in [0, 1, 1, 2, 2, 2]:
            feature = {
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    python = repo_root / ".venv-validate" / "bin" / "python"
    assert python.exists(), "run `make env-validate` to create the validation environment"
    script = textwrap.dedent(
        f"""
        import tensorflow_data_validation as tfdv
        stats = tfdv.generate_statistics_from_tfrecord({str(records)!r})
        dataset = stats.datasets[0]
        feature = dataset.features[0]
        print(tfdv.__version__, dataset.num_examples, feature.num_stats.max, feature.num_stats.mean)
        """
    )
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version, count, maximum, mean = result.stdout.split()[-4:]
    assert version == pinned_version(
        repo_root / "requirements-validate.txt", "tensorflow-data-validation"
    )
    assert int(count) == 6 and float(maximum) == 2.0
    assert abs(float(mean) - 8 / 6) < 1e-9


def test_the_validation_environment_names_a_missing_compiler_before_building(repo_root, tmp_path):
    """pyfarmhash and crcmod are compiled by `make env-validate`: without a compiler, make
    says so and what to install, before it removes or creates anything."""
    shutil.copy(repo_root / "Makefile", tmp_path)
    (tmp_path / "requirements-validate.txt").touch()  # nothing to install: no network
    (tmp_path / ".tools" / "bin").mkdir(parents=True)
    (tmp_path / ".tools" / "bin" / "uv").symlink_to(repo_root / ".tools" / "bin" / "uv")
    target = ".venv-validate/.installed"
    refused = subprocess.run(
        ["make", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CC": "/no/such/cc"},
    )
    assert refused.returncode != 0
    assert "this machine has no /no/such/cc" in refused.stderr, refused.stderr
    assert "apt-get install g++ python3-dev" in refused.stderr
    assert not (tmp_path / ".venv-validate").exists()
    # With this machine's compilers the check passes and the environment is made.
    made = subprocess.run(
        ["make", target], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / target).exists()
