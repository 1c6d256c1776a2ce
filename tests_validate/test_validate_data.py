"""data/validate_data.py on real TFRecords with real TFDV: clean data passes, each broken
promise of the converter is reported by feature name, a hand-edited schema is kept, and bad
usage gets a message instead of a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import CLASS_NAMES, REPO_ROOT


def run(validate_data, capsys, *arguments):
    """(exit status, stdout, stderr) of the command, run in this process."""
    status = validate_data.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def copy_profiled(profiled_records, tmp_path):
    """The profiled folder without the validation split's records and outputs."""
    folder = tmp_path / "records"
    shutil.copytree(
        profiled_records, folder, ignore=shutil.ignore_patterns("validation*", "anomalies_*")
    )
    return folder


def with_validation_split(profiled_records, tmp_path, change):
    """A copy of the profiled folder whose validation examples are rewritten by
    `change(index, example)`; returns the folder."""
    folder = copy_profiled(profiled_records, tmp_path)
    sources = [str(path) for path in sorted(profiled_records.glob("validation-*.tfrecord"))]
    with tf.io.TFRecordWriter(str(folder / "validation-00000-of-00001.tfrecord")) as writer:
        for index, record in enumerate(tf.data.TFRecordDataset(sources).as_numpy_iterator()):
            example = tf.train.Example.FromString(record)
            change(index, example)
            writer.write(example.SerializeToString())
    return folder


def feature(example, name):
    return example.features.feature[name]


def label_out_of_domain(index, example):
    if index == 0:
        feature(example, "image/class/label").int64_list.value[0] = len(CLASS_NAMES)


def missing_encoded_image(index, example):
    if index == 0:
        del example.features.feature["image/encoded"]


def wrong_size_image(index, example):
    """One 300x300 image, as an older converter (or another tool) would have written it."""
    if index == 0:
        pixels = tf.random.stateless_uniform((300, 300, 3), seed=(1, 2), maxval=256, dtype=tf.int32)
        feature(example, "image/encoded").bytes_list.value[0] = tf.io.encode_jpeg(
            tf.cast(pixels, tf.uint8)
        ).numpy()
        feature(example, "image/height").int64_list.value[0] = 300
        feature(example, "image/width").int64_list.value[0] = 300


def unknown_class_name(index, example):
    if index == 0:
        feature(example, "image/class/text").bytes_list.value[0] = b"hexagon"


def one_class_only(index, example):
    """Every validation example in class 0: the label distribution has drifted."""
    feature(example, "image/class/label").int64_list.value[0] = 0
    feature(example, "image/class/text").bytes_list.value[0] = CLASS_NAMES[0].encode()


def report_of(folder, name="validation"):
    return json.loads((folder / f"validation_{name}.json").read_text())


def test_clean_data_has_statistics_a_curated_schema_and_no_anomaly(
    profiled_records, tmp_path, validate_data, capsys
):
    folder = copy_profiled(profiled_records, tmp_path)
    shutil.copy(next(profiled_records.glob("validation-*.tfrecord")), folder)
    info = json.loads((folder / "dataset.json").read_text())

    # Statistics: the binary proto, TFDV's HTML view, and a summary with the class counts.
    status, out, _ = run(
        validate_data, capsys, "stats", "--data_dir", folder, "--split", "validation"
    )
    assert status == 0
    for class_name, count in info["class_counts"]["validation"].items():
        assert any(line.split()[1:] == [class_name, str(count)] for line in out.splitlines()), out
    assert f"{info['num_examples']['validation']} examples" in out
    assert "facets-overview" in (folder / "stats" / "validation.html").read_text()

    # The schema bounds what inference alone does not.
    schema_text = (folder / "schema.pbtxt").read_text()
    assert f"max: {len(CLASS_NAMES) - 1}" in schema_text
    assert "circle/" not in schema_text  # no inferred domain of training file names

    status, out, _ = run(validate_data, capsys, "validate", "--data_dir", folder)
    assert status == 0, out
    assert "PASSED" in out and "Jensen-Shannon): 0.0000" in out
    report = report_of(folder)
    assert report["passed"] and report["anomalies"] == []
    assert report["examples"] == info["num_examples"]["validation"]
    assert (folder / "anomalies_validation.pbtxt").exists()
    assert (folder / "stats" / "validation_vs_train.html").exists()

    status, out, _ = run(
        validate_data, capsys, "validate", "--data_dir", folder, "--split", "train"
    )
    assert status == 0, out
    assert report_of(folder, "train")["examples"] == info["num_examples"]["train"]

    # A new batch from another folder: named after the folder.
    batch = tmp_path / "batch_7"
    batch.mkdir()
    shutil.copy(next(profiled_records.glob("validation-*.tfrecord")), batch / "part-0.tfrecord")
    status, out, _ = run(
        validate_data, capsys, "validate", "--data_dir", folder, "--records", batch
    )
    assert status == 0, out
    assert report_of(folder, "batch_7")["passed"]


@pytest.mark.parametrize(
    "change, features, kind",
    [
        (label_out_of_domain, {"image/class/label"}, "Out-of-range values"),
        (missing_encoded_image, {"image/encoded"}, "Column dropped"),
        (wrong_size_image, {"image/height", "image/width"}, "Out-of-range values"),
        (unknown_class_name, {"image/class/text"}, "Unexpected string values"),
        (one_class_only, {"image/class/label"}, "Jensen-Shannon"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_each_anomaly_is_reported_by_feature_and_fails(
    change, features, kind, profiled_records, tmp_path, validate_data, capsys
):
    folder = with_validation_split(profiled_records, tmp_path, change)
    status, out, _ = run(validate_data, capsys, "validate", "--data_dir", folder)
    assert status == 1, out
    report = report_of(folder)
    assert not report["passed"]
    assert {row["feature"] for row in report["anomalies"]} == features
    for name in features:
        assert any(row["feature"] == name and kind in row["kind"] for row in report["anomalies"]), (
            report["anomalies"]
        )
    for name in features:  # the printed report names the feature, the kind and TFDV's words
        assert any(line.split()[:1] == [name] and kind in line for line in out.splitlines()), out
    assert (folder / "validation_validation.txt").read_text() in out
    assert all(name in (folder / "anomalies_validation.pbtxt").read_text() for name in features)
    if change is one_class_only:
        # The threshold can be overridden for one run; 0 turns the drift check off.
        assert (
            run(
                validate_data, capsys, "validate", "--data_dir", folder, "--drift_threshold", "0.9"
            )[0]
            == 0
        )
        assert (
            run(validate_data, capsys, "validate", "--data_dir", folder, "--drift_threshold", "0")[
                0
            ]
            == 0
        )
        assert (
            run(
                validate_data, capsys, "validate", "--data_dir", folder, "--drift_threshold", "0.2"
            )[0]
            == 1
        )


def test_a_hand_edited_schema_is_kept_and_respected(
    profiled_records, tmp_path, validate_data, capsys
):
    folder = with_validation_split(profiled_records, tmp_path, wrong_size_image)
    schema_path = folder / "schema.pbtxt"
    curated = schema_path.read_text()
    # The user's data really has 300x300 images too: allow them by hand.
    edited = curated.replace("min: 256\n    max: 256", "min: 256\n    max: 300")
    assert edited.count("max: 300") == 2
    schema_path.write_text(edited)

    status, out, _ = run(validate_data, capsys, "schema", "--data_dir", folder)
    assert status == 0 and "kept" in out
    assert schema_path.read_text() == edited
    assert run(validate_data, capsys, "validate", "--data_dir", folder)[0] == 0

    assert run(validate_data, capsys, "schema", "--data_dir", folder, "--force")[0] == 0
    assert schema_path.read_text() == curated
    assert run(validate_data, capsys, "validate", "--data_dir", folder)[0] == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_records", "holds no TFRecord files"),
        ("no_data_dir", "does not exist"),
        ("no_schema", "no schema yet"),
        ("no_training_statistics", "no statistics of the train split"),
        (
            "unknown_split",
            "has no 'test' split (no test-*.tfrecord files); its splits: train, validation",
        ),
        ("mistyped_flag", "unknown flags: --drift_treshold"),
        ("split_and_records", "--split and --records exclude each other"),
    ],
)
def test_bad_usage_gets_a_clear_message(
    case, message, converted_records, profiled_records, tmp_path, validate_data, capsys
):
    converted = tmp_path / "converted"
    shutil.copytree(converted_records, converted)
    arguments = {
        "no_records": ["stats", "--data_dir", tmp_path],
        "no_data_dir": ["stats", "--data_dir", tmp_path / "missing"],
        "no_schema": ["validate", "--data_dir", converted],
        "no_training_statistics": ["schema", "--data_dir", converted],
        "unknown_split": ["validate", "--data_dir", profiled_records, "--split", "test"],
        "mistyped_flag": ["validate", "--data_dir", profiled_records, "--drift_treshold", "0.2"],
        "split_and_records": [
            "stats",
            "--data_dir",
            converted,
            "--split",
            "train",
            "--records",
            converted,
        ],
    }[case]
    status, out, err = run(validate_data, capsys, *arguments)
    assert status == 2
    assert err.startswith("error: ") and message in err, err
    assert "validate_data.py" in err or case not in ("no_schema", "no_training_statistics")


def test_bad_usage_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "data/validate_data.py", "validate", "--data_dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "holds no TFRecord files" in result.stderr


def test_help_answers_without_tensorflow():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "data/validate_data.py", "validate", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--drift_threshold" in result.stdout and "--against" in result.stdout
    assert "tensorflow" not in result.stderr  # -X importtime lists every module imported


def test_the_command_prints_its_report_without_the_libraries_start_up_chatter(
    converted_records, tmp_path
):
    """As `make demo` runs it (TF_CPP_MIN_LOG_LEVEL=1): this environment's TensorFlow logs CUDA
    plugin clashes and a missing TensorRT as it starts, Beam a missing python-snappy."""
    folder = tmp_path / "records"
    shutil.copytree(converted_records, folder)
    result = subprocess.run(
        [sys.executable, "data/validate_data.py", "stats", "--data_dir", str(folder)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "72 examples" in result.stdout
    for chatter in ("Unable to register", "TF-TRT", "python-snappy", "FutureWarning"):
        assert chatter not in result.stderr, result.stderr[-3000:]


def test_the_benchmark_runs_on_these_records(converted_records, capsys):
    """bench/validate_speed.py --smoke (one run of each timing), in this process, where TFDV
    has started already: that the benchmark runs."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import validate_speed
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    assert validate_speed.main(["--smoke", "--data_dir", str(converted_records)]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["images"] == 72 + 24
    assert results["tfdv_direct_runner_images_per_s"] > 0
