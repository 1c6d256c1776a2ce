"""The prediction job on Apache Beam (`predict.py --runner`), run with the DirectRunner in this
process: the same rows as the local command on a folder of good and damaged images and a
records folder, the same fc7 features, one model load per worker, and its usage errors."""

import csv
import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_serving import LABELS, encoded, save_model

from alexnet_keras import (
    beam_inputs,
    beam_outputs,
    beam_prediction,
    prediction,
    prediction_outputs,
    serving,
)
from alexnet_keras_base.layout import Feature
from alexnet_keras_cli import predict
from commands import run_main

BATCH_SIZE = 3


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The export TF Serving gets: export_model's, with its serving_default and features
    signatures."""
    folder = tmp_path_factory.mktemp("beam_export")
    model = keras.models.load_model(save_model(folder / "alexnet.keras"))
    return serving.export_model(model, folder / "exports", LABELS, log=lambda message: None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder that mixes good and damaged images, a records folder of our own, and a
    dangling symbolic link."""
    root = tmp_path_factory.mktemp("beam_inputs")
    images = root / "images"
    for index, (name, data) in enumerate(
        {
            "circle/photo.jpg": encoded("JPEG", (300, 240), seed=1),
            "circle/drawing.png": encoded("PNG", (256, 300), seed=2),
            "star/square.jpg": encoded("JPEG", (256, 256), seed=3),
            "star/bitmap.bmp": encoded("BMP", (240, 250), seed=4),
            "unknown_class/lossy.webp": encoded("WEBP", (300, 300), seed=5),
            "ring/other.jpg": encoded("JPEG", (320, 256), seed=6),
            "ring/empty.jpg": b"",
            "star/truncated.jpg": encoded("JPEG", (300, 300), seed=7)[:400],
            "circle/notes.png": b"this is text, not a PNG\n",
            "README.txt": b"not an image",
            ".DS_Store": b"\0\0\0\1Bud1",
            ".cache/hidden.jpg": encoded("JPEG", (256, 256), seed=8),
        }.items()
    ):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(data)
    (images / "ring" / "gone.jpg").symlink_to(root / "no_such_file.jpg")
    (root / "lost.jpg").symlink_to(root / "no_such_file.jpg")  # given as an INPUT itself

    records = root / "records"
    records.mkdir()
    class_names = ["ring", "square"]
    (records / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))
    (records / "dataset.json").write_text(json.dumps({"num_examples": {"validation": 3}}))
    with tf.io.TFRecordWriter(str(records / "validation-00000-of-00001.tfrecord")) as writer:
        for index, (image, label) in enumerate(
            [(encoded("JPEG", seed=10), 0), (b"not a JPEG", 1), (encoded("JPEG", seed=11), 1)]
        ):
            feature = {
                Feature.ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                Feature.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                Feature.FILENAME: tf.train.Feature(
                    bytes_list=tf.train.BytesList(
                        value=[f"{class_names[label]}/source_{index}.jpg".encode()]
                    )
                ),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return images, records, root / "lost.jpg"


def local_rows(export_dir, inputs, output, *flags):
    result = run_main(
        predict.main,
        "--model",
        export_dir,
        "--output",
        output,
        "--no_progress",
        "--batch_size",
        BATCH_SIZE,
        *flags,
        *inputs,
    )
    assert result.returncode == predict.SOME_FAILED, result.stderr[-3000:]
    return [json.loads(line) for line in output.read_text().splitlines()]


def beam_rows(export_dir, inputs, output, *flags):
    """Runs the job with the DirectRunner in this process -> (rows sorted by path, stdout)."""
    result = run_main(
        predict.main,
        "--runner",
        "DirectRunner",
        "--model",
        export_dir,
        "--output",
        output,
        "--batch_size",
        BATCH_SIZE,
        *flags,
        *inputs,
    )
    assert result.returncode == predict.SOME_FAILED, result.stderr[-3000:]
    shards = sorted(output.parent.glob(f"{output.stem}-*-of-*{output.suffix}"))
    assert shards and all(
        re.fullmatch(rf"{output.stem}-\d{{5}}-of-\d{{5}}\.jsonl", shard.name) for shard in shards
    )
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    return sorted(rows, key=lambda row: row["path"]), result.stdout


def counter(stdout, name):
    return int(re.search(rf"\b{name} (\d+)", stdout)[1])


def assert_same_rows(beam, local):
    assert [row["path"] for row in beam] == [row["path"] for row in local]
    for beam_row, local_row in zip(beam, local):
        assert {key: value for key, value in beam_row.items() if key != "scores"} == {
            key: value for key, value in local_row.items() if key != "scores"
        }
        np.testing.assert_allclose(beam_row["scores"], local_row["scores"], atol=1e-5)


def without_dangling_symlink(rows):
    # Beam's file matching lists only files it can stat: a dangling symlink inside a folder
    # is no file to it, where the local command's walk gives it an error row.
    kept = [row for row in rows if not row["path"].endswith("gone.jpg")]
    assert len(kept) == len(rows) - 1
    return kept


@pytest.mark.slow
def test_the_job_answers_as_the_local_command_with_one_model_load(export_dir, inputs, tmp_path):
    local = sorted(
        local_rows(export_dir, inputs, tmp_path / "local.jsonl"), key=lambda row: row["path"]
    )
    beam, stdout = beam_rows(export_dir, inputs, tmp_path / "beam.jsonl")
    assert_same_rows(beam, without_dangling_symlink(local))

    root = len(str(inputs[0].parent)) + 1
    by_name = {row["path"][root:]: row for row in beam}
    assert {name for name, row in by_name.items() if row["error"]} == {
        "images/ring/empty.jpg",
        "images/star/truncated.jpg",
        "images/circle/notes.png",
        "records/validation-00000-of-00001.tfrecord#square/source_1.jpg",
        "lost.jpg",
    }
    assert by_name["lost.jpg"]["error"] == "cannot read the file: No such file or directory"
    assert by_name["images/circle/photo.jpg"]["true_label"] == "circle"
    assert by_name["images/unknown_class/lossy.webp"]["true_label"] is None
    assert (
        by_name["records/validation-00000-of-00001.tfrecord#ring/source_0.jpg"]["true_label"]
        == "ring"
    )
    assert len(by_name) == 13  # README.txt, .DS_Store and .cache/ skipped

    answered = sum(row["error"] is None for row in beam)
    assert counter(stdout, beam_prediction.ANSWERED) == answered
    assert counter(stdout, beam_prediction.REFUSED) == len(beam) - answered
    # One load for the whole job: the DirectRunner is one worker process here. A handler
    # that loaded the export for each batch would count one load per batch.
    assert counter(stdout, beam_prediction.BATCHES) >= math.ceil(len(beam) / BATCH_SIZE) > 1
    assert counter(stdout, beam_prediction.MODELS_LOADED) == 1


@pytest.mark.slow
def test_the_job_writes_the_local_commands_features(export_dir, inputs, tmp_path):
    local = local_rows(
        export_dir, inputs, tmp_path / "local.jsonl", "--features_dir", tmp_path / "local_fc7"
    )
    beam, _ = beam_rows(
        export_dir, inputs, tmp_path / "beam.jsonl", "--features_dir", tmp_path / "beam_fc7"
    )
    assert_same_rows(beam, without_dangling_symlink(sorted(local, key=lambda row: row["path"])))

    def features(folder):
        with open(folder / prediction_outputs.FEATURES_INDEX, newline="") as handle:
            index = list(csv.DictReader(handle))
        shards = {name: np.load(folder / name) for name in {row["file"] for row in index}}
        assert all(shard.dtype == np.float32 for shard in shards.values())
        paths = [row["path"] for row in index]
        assert len(paths) == len(set(paths))  # every answered path exactly once
        return {row["path"]: shards[row["file"]][int(row["row"])] for row in index}

    local_features, beam_features = (
        features(tmp_path / "local_fc7"),
        features(tmp_path / "beam_fc7"),
    )
    assert set(beam_features) == {row["path"] for row in beam if row["error"] is None}
    assert set(beam_features) == set(local_features)
    for path, fc7 in beam_features.items():
        np.testing.assert_allclose(fc7, local_features[path], atol=1e-5)


def test_the_handler_answers_a_batch_with_a_bad_image_as_the_local_command(export_dir):
    handler = beam_prediction.ExportModelHandler(export_dir, batch_size=4, top_k=3)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 4}
    model = handler.load_model()
    good, bad = encoded("JPEG", seed=1), b"not an image"
    answers = handler.run_inference(
        [beam_inputs.Image("a.jpg", "circle", good), beam_inputs.Image("b.jpg", None, bad)],
        model,
    )
    (first, fc7), (second, no_fc7) = answers
    assert fc7 is None and no_fc7 is None
    assert first["error"] is None and len(first["labels"]) == 3
    assert first["true_label"] == "circle"
    try:
        model.answer_one(bad)
    except tf.errors.InvalidArgumentError as error:
        assert second == prediction.error_row("b.jpg", prediction.error_message(error))
    else:
        raise AssertionError("the export answered a file that is not an image")


def test_beam_options_without_runner_are_refused(export_dir, tmp_path):
    result = run_main(
        predict.main,
        "--model",
        export_dir,
        "--output",
        tmp_path / "out.jsonl",
        "--temp_location",
        "gs://bucket/tmp",
        tmp_path,
    )
    assert result.returncode == 2
    assert (
        result.stderr.splitlines()[-1].startswith("predict.py: error: unrecognized")
        or "error: unrecognized arguments: --temp_location" in result.stderr
    )
    assert "need --runner" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--explain", "heatmaps"], "--explain is not available with --runner"),
        (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    ],
)
def test_the_runner_refuses_what_the_job_cannot_do(export_dir, tmp_path, flags, message):
    result = run_main(
        predict.main,
        "--runner",
        "DirectRunner",
        "--model",
        export_dir,
        "--output",
        tmp_path / "out.jsonl",
        *flags,
        tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]


def test_the_job_needs_an_export_and_keeps_a_finished_output(export_dir, tmp_path):
    model_file = export_dir.parent.parent / "alexnet.keras"
    refused = run_main(
        predict.main,
        "--runner",
        "DirectRunner",
        "--model",
        model_file,
        "--output",
        tmp_path / "out.jsonl",
        tmp_path,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        f"error: --runner answers through an export (export/export_model.py): {model_file} is "
        f"a Keras model file"
    )
    (tmp_path / "out-00000-of-00001.jsonl").write_text("{}\n")
    kept = run_main(
        predict.main,
        "--runner",
        "DirectRunner",
        "--project",
        "p",
        "--model",
        export_dir,
        "--output",
        tmp_path / "out.jsonl",
        tmp_path,
    )
    assert kept.returncode == 2
    assert kept.stderr.splitlines()[-1].startswith(
        f"error: {tmp_path / 'out-00000-of-00001.jsonl'} exists"
    )


def test_beam_options_keep_their_values_apart_from_the_inputs():
    args = predict.parse_args(
        [
            "--runner",
            "DataflowRunner",
            "--project",
            "my-project",
            "--model",
            "exports/alexnet",
            "--region=europe-west4",
            "--save_main_session",
            "--output",
            "out.jsonl",
            "--labels",
            "team=vision",
            "photos/",
            "more/",
        ]
    )
    assert args.inputs == ["photos/", "more/"]
    assert args.runner == "DataflowRunner"
    assert args.beam_args == [
        "--runner",
        "DataflowRunner",
        "--project",
        "my-project",
        "--region=europe-west4",
        "--save_main_session",
        "--labels",
        "team=vision",
    ]


def test_a_jobs_output_is_its_own_shards_and_temporaries_not_another_outputs(tmp_path):
    """`rows.jsonl`'s shards and Beam's temporary folder, beside those of `rows-val.jsonl`:
    only its own count as its finished output (refused, or removed by --overwrite) and as
    its temporaries (removed after a full disk)."""
    for name in ("rows-00000-of-00001.jsonl", "rows-val-00000-of-00001.jsonl"):
        (tmp_path / name).write_text("{}\n")
    own, other = (tmp_path / f"beam-temp-{name}-{'ab12' * 8}" for name in ("rows", "rows-val"))
    own.mkdir()
    other.mkdir()
    outputs = beam_outputs.JobOutputs(
        str(tmp_path / "rows.jsonl"), str(tmp_path / "rows"), ".jsonl"
    )
    assert list(outputs.earlier(overwrite=True)) == [str(tmp_path / "rows-00000-of-00001.jsonl")]
    assert outputs._temporaries() == {own}
