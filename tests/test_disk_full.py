"""A full disk, made for real: a small tmpfs mounted by the test, filled with a file that
leaves the space a command should run out of. Every writing command ends with one `error:`
line naming the file, status 5 (DiskFull), no traceback, no temporaries, and the earlier
results whole; a rerun after the space is freed goes on."""

import errno
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_training import TINY, tiny_flags

import alexnet_keras
from alexnet_keras import caffe_weights, training
from alexnet_keras.model import values_bytes
from alexnet_keras_base.disk_full import is_disk_full
from alexnet_keras_base.errors import DiskFull
from alexnet_keras_cli import build_tfrecords as build_tfrecords_command
from alexnet_keras_cli import command
from alexnet_keras_cli import evaluate as evaluate_command
from alexnet_keras_cli import export_model as export_command
from alexnet_keras_cli import predict as predict_command
from alexnet_keras_cli import train as train_command
from caffe_files import random_weights, write_npy
from commands import run_main
from full_disk import (
    PAGE,
    assert_disk_full,
    fill,
    snapshot,
    temporaries,
)

NUM_CLASSES = 4  # as the synthetic_records fixture


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = alexnet_keras.build_alexnet(num_classes=NUM_CLASSES, width_multiplier=0.125)
    path = tmp_path_factory.mktemp("model") / "alexnet.keras"
    model.save(path)
    return path


def test_every_form_of_a_full_disk_and_only_those():
    """OSError ENOSPC, numpy's short write and TensorFlow's ResourceExhaustedError with
    "No space left on device" are a full disk; TensorFlow's out-of-memory is not, and keeps
    its traceback; a full disk wins over a command's other OSErrors (status 2)."""
    no_space = tf.errors.ResourceExhaustedError(
        None, None, "/d/x.tfrecord; No space left on device"
    )
    out_of_memory = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError("1000000 requested and 393200 written"))
    assert is_disk_full(no_space)
    assert not is_disk_full(out_of_memory)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))

    def failing(error):
        @command(OSError)
        def main(argv):
            raise error

        return main

    result = run_main(failing(no_space))
    assert_disk_full(result, "/d/x.tfrecord", "free space and run the command again")
    result = run_main(failing(OSError(errno.ENOSPC, "No space left on device", "/d/y.csv")))
    assert_disk_full(result, "/d/y.csv", "run the command again")
    assert run_main(failing(OSError(errno.EACCES, "Permission denied"))).returncode == 2
    # A used-up quota (EDQUOT; TensorFlow maps it to ResourceExhaustedError too) is said as
    # such, without the disk's free space, which says nothing then. This kernel's tmpfs has
    # no quotas to make one for real.
    quota = "error: your disk quota is used up: no space left writing "
    for error, path in (
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/d/q.csv"), "/d/q.csv"),
        (tf.errors.ResourceExhaustedError(None, None, "/d/q.ckpt; Disk quota exceeded"), None),
    ):
        result = run_main(failing(error))
        assert result.returncode == 5 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"{quota}{path or '/d/q.ckpt'}; free space and run the command again"
        ), result.stderr
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM"):
        run_main(failing(out_of_memory))


def test_the_converter_keeps_its_finished_shards(synthetic_records, disk):
    """The disk fills on the second shard: the first stays with its summary, and the rerun
    reuses it and writes the same shards as a conversion that had room."""
    output = disk / "records"
    first = sorted(synthetic_records.glob("train-*.tfrecord"))[0]
    filler = fill(disk, first.stat().st_size + 4 * PAGE)
    # The fixture's images and options: the same shards, byte for byte.
    arguments = [
        "--input_dir",
        synthetic_records.parent / "images",
        "--output_dir",
        output,
        "--val_fraction",
        "0.25",
        "--num_shards",
        "4",
        "--workers",
        "2",
        "--no_progress",
    ]
    result = run_main(build_tfrecords_command.main, *arguments)
    assert_disk_full(result, output / "train-00001-of-00004.tfrecord", "finished shards")
    assert not temporaries(disk)
    assert (output / first.name).read_bytes() == first.read_bytes()
    assert sorted(path.name for path in output.glob("*.tfrecord")) == [first.name]

    filler.unlink()
    result = run_main(build_tfrecords_command.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming: 1 of 6 shards already complete" in result.stderr
    for shard in synthetic_records.glob("*.tfrecord"):
        assert (output / shard.name).read_bytes() == shard.read_bytes(), shard.name


@pytest.mark.slow
def test_training_keeps_the_last_good_checkpoint_and_resumes_from_it(synthetic_records, disk):
    """Room for the first epoch's checkpoint, model and curves and the second epoch's files,
    not for its checkpoint (weights and momentum: twice the model): the run stops on it,
    ckpt-1 stays the latest, and the rerun ends the two epochs."""
    config = TINY.replace(epochs=2, checkpoint_every_steps=1000)  # a checkpoint per epoch
    weights = values_bytes(training.build_model(config, NUM_CLASSES).weights)
    assert weights > 2_000_000  # so that half of it dwarfs the curves, logs and records
    filler = fill(disk, 4 * weights + weights // 2)
    model_dir = disk / "run"
    arguments = ["--data_dir", synthetic_records, "--model_dir", model_dir, *tiny_flags(config)]
    result = run_main(train_command.main, *arguments)
    checkpoints = model_dir / "checkpoints"
    error = assert_disk_full(
        result, checkpoints / "ckpt-2", f"the last checkpoint, {checkpoints / 'ckpt-1'}, is kept"
    )
    assert "it needs about" in error
    assert not temporaries(disk)
    assert sorted(path.name for path in checkpoints.iterdir() if "ckpt-2" in path.name) == []
    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "ckpt-1")
    keras.models.load_model(model_dir / "alexnet_best.keras")  # whole

    filler.unlink()
    result = run_main(train_command.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {checkpoints / 'ckpt-1'}" in result.stdout
    rows = (model_dir / "history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1"]
    keras.models.load_model(model_dir / "alexnet.keras")


def test_an_export_leaves_no_temporary_folder_and_keeps_its_versions(model_file, disk):
    """Room for half the weights: the export fails on writing its variables. Version 1, a
    small SavedModel of its own (a second export of ours would double the test's time),
    stays as it was."""
    base = disk / "alexnet"
    tf.saved_model.save(tf.Module(), str(base / "1"))
    version_1 = snapshot(base / "1")
    model = keras.models.load_model(model_file)
    filler = fill(disk, values_bytes(model.weights) // 2)
    result = run_main(export_command.main, "--model", model_file, "--export_base", base)
    assert_disk_full(result, base / "2", "the versions already in")
    assert not temporaries(disk) and not list(disk.glob(".alexnet.tmp-*"))
    assert sorted(path.name for path in base.iterdir()) == ["1"]
    assert snapshot(base / "1") == version_1
    tf.saved_model.load(str(base / "1"))
    filler.unlink()


def test_predict_keeps_its_rows_and_features_and_a_rerun_answers_the_rest(
    model_file, synthetic_records, disk, tmp_path
):
    """Room for the journal and the fc7 of one and a half batches: the second batch's
    features fill the disk; the rerun answers the rest and drops the half batch."""
    images = tmp_path / "images"  # 16 of the records' images
    for source in sorted((synthetic_records.parent / "images").rglob("*.jpg"))[::6]:
        target = images / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    output, features = disk / "rows.jsonl", disk / "features"
    batch, fc7_bytes = 4, keras.models.load_model(model_file).get_layer("fc7").units * 4
    filler = fill(disk, 2 * PAGE + 3 * batch * fc7_bytes // 2)
    arguments = [
        "--model", model_file, "--output", output, "--features_dir", features,
        "--batch_size", batch, "--no_progress", images,
    ]  # fmt: skip
    result = run_main(predict_command.main, *arguments)
    assert_disk_full(result, features / ".features-00000.npy.partial", "rows answered so far")
    assert not temporaries(disk) and not output.exists()
    answered = (disk / ".rows.jsonl.partial").read_text().splitlines()
    assert 0 < len(answered) < 16

    filler.unlink()
    result = run_main(predict_command.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images already have a row" in result.stdout
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len({row["path"] for row in rows}) == 16
    assert np.load(features / "features-00000.npy").shape == (16, fc7_bytes // 4)


def test_evaluate_leaves_each_report_file_whole(model_file, synthetic_records, disk):
    """The report folder of an earlier run, then a full disk part-way through the new
    report: every file is whole (old or new), none temporary."""
    report = disk / "report"
    arguments = [
        "--model", model_file, "--data_dir", synthetic_records, "--output_dir", report,
        "--no_progress",
    ]  # fmt: skip
    assert run_main(evaluate_command.main, *arguments).returncode == 0
    earlier = snapshot(report)
    filler = fill(disk, 3 * PAGE)  # room for report.json and per_class.csv, not the figures
    result = run_main(evaluate_command.main, *arguments)
    assert_disk_full(result, report / "confusion_matrix.png", "the model is untouched")
    assert not temporaries(disk)
    assert sorted(snapshot(report)) == sorted(earlier)
    json.loads((report / "report.json").read_text())
    for name in earlier:
        if name.suffix == ".png":
            Image.open(report / name).verify()
            assert (report / name).read_bytes() == earlier[name]
    filler.unlink()


def test_an_import_keeps_the_earlier_model(tmp_path, disk):
    """The command imports the full-size network only; the library call it makes, at an
    eighth of the width, meets the same full disk."""
    weights = write_npy(tmp_path / "bvlc_alexnet.npy", random_weights(0.125, NUM_CLASSES))
    output = disk / "imported.keras"

    def import_to_disk():
        caffe_weights.import_weights(
            weights, output, width_multiplier=0.125, num_classes=NUM_CLASSES
        )

    import_to_disk()
    earlier = output.read_bytes()
    filler = fill(disk, len(earlier) // 2)
    with pytest.raises(DiskFull) as raised:
        import_to_disk()
    assert raised.value.path == output and raised.value.needed_bytes > len(earlier) // 2
    assert not temporaries(disk)
    assert output.read_bytes() == earlier
    filler.unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    "room, keeps",
    [
        (0, "no checkpoint was written yet"),  # the writer's first event, when it is made
        (PAGE, "the last checkpoint, {}, is kept"),  # the kernel image after the last epoch
    ],
    ids=["first event", "kernel image"],
)
def test_training_stops_when_its_tensorboard_log_no_longer_fits(
    room, keeps, synthetic_records, disk, tmp_path, capfd
):
    """The run folder on a disk with room, its TensorBoard folder (a link) on a full one:
    one line names the events file, and TensorFlow's own logs of it (several lines, on file
    descriptor 2) are held back; the rerun with room ends with the two epochs."""
    config = TINY.replace(epochs=2, checkpoint_every_steps=1000)
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (disk / "logs").mkdir()
    (model_dir / "logs").symlink_to(disk / "logs")
    filler = fill(disk, room)
    arguments = ["--data_dir", synthetic_records, "--model_dir", model_dir, *tiny_flags(config)]
    capfd.readouterr()
    result = run_main(train_command.main, *arguments)
    last = model_dir / "checkpoints" / "ckpt-2"
    error = assert_disk_full(
        result, model_dir / "logs" / "events.out.tfevents.", keeps.format(last)
    )
    # TensorFlow's logs come through the command's standard error, or file descriptor 2.
    others = result.stderr.replace(error, "") + capfd.readouterr().err
    assert "tfevents" not in others and "No space left" not in others, others
    filler.unlink()
    result = run_main(train_command.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (model_dir / "history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1"]
