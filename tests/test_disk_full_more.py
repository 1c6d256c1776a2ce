"""A full disk under the commands that test_disk_full.py does not run: the prediction job on
Apache Beam, and import_weights.py as a process of its own. Each ends with one `error:` line
naming the file, status 5, no traceback and no log line of TensorFlow's or Beam's about the
disk, no temporaries, and the earlier results whole."""

import errno
import json
import logging
import subprocess

import keras
import numpy as np
import pytest
from apache_beam.io.filesystem import BeamIOError
from test_serving import LABELS, encoded, save_model
from test_training import Worker, free_port, stop_cluster, tiny_flags

from alexnet_keras import serving
from alexnet_keras_base.disk_full import NO_SPACE, as_disk_full, is_disk_full
from alexnet_keras_base.errors import DiskFull, PeerLost, UsageError
from alexnet_keras_cli import predict as predict_command
from caffe_files import random_weights, write_caffemodel
from commands import run_main
from full_disk import (
    PAGE,
    assert_disk_full,
    fill,
    snapshot,
    temporaries,
)

IMAGES = 4


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beam_export")
    model = keras.models.load_model(save_model(folder / "alexnet.keras"))
    return serving.export_model(model, folder / "exports", LABELS, log=lambda message: None)


@pytest.fixture(scope="module")
def few_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beam_images")
    for seed in range(IMAGES):
        (folder / f"photo_{seed}.jpg").write_bytes(encoded("JPEG", (256, 256), seed=seed))
    return folder


def everything(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("full", ["rows", "features"])
def test_the_beam_job_keeps_the_earlier_output_and_no_part_of_its_own(
    full,
    export_dir,
    few_images,
    disk,
    tmp_path,
    caplog,
):
    """The rows' folder, or the features folder, on a full disk: the worker's error, which
    Beam wraps in its own, is one line naming the file; Beam's temporary folders and the fc7
    shards already written are removed, the earlier output (replaced by --overwrite) is as
    it was, and a rerun with room replaces it."""
    output = (disk if full == "rows" else tmp_path) / "rows.jsonl"
    features = disk / "fc7" if full == "features" else tmp_path / "fc7"
    (output.parent / "rows-00000-of-00003.jsonl").write_text('{"path": "earlier"}\n')
    features.mkdir()
    (features / "index.csv").write_text("path,file,row\nearlier,features-0123456789abcdef.npy,0\n")
    np.save(features / "features-0123456789abcdef.npy", np.zeros((1, 4), np.float32))
    earlier = {folder: everything(folder) for folder in (disk, tmp_path)}
    kept = {folder: snapshot(folder) for folder in (disk, tmp_path)}
    filler = fill(disk, 0)
    arguments = [
        "--runner", "DirectRunner", "--model", export_dir, "--output", output,
        "--features_dir", features, "--batch_size", 2, "--overwrite", few_images,
    ]  # fmt: skip
    result = run_main(predict_command.main, *arguments)
    written = output if full == "rows" else features / "features-"
    assert_disk_full(result, written, "a Beam job keeps no part of its output")
    assert "(the earlier output is as it was)" in result.stderr
    # Beam logs the failed bundle with a traceback: held back.
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    filler.unlink()
    assert {folder: everything(folder) for folder in (disk, tmp_path)} == earlier
    assert {folder: snapshot(folder) for folder in (disk, tmp_path)} == kept

    result = run_main(predict_command.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "features-0123456789abcdef.npy" not in everything(features)
    rows = (output.parent / "rows-00000-of-00001.jsonl").read_text().splitlines()
    assert len(rows) == IMAGES and json.loads(rows[0])["error"] is None
    assert not list(output.parent.glob("rows-*-of-00003.jsonl"))


def test_a_full_disk_inside_another_errors_text_and_only_that():
    """Beam's wrappings of a worker's error, in this process (a RuntimeError of its text) and
    from a remote worker (the job's error, holding the worker's traceback), say a full disk,
    with the file when the worker's error named one; an error that wraps another failure,
    TensorFlow's out of memory or a message of ours that quotes a full disk does not."""
    step = " [while running 'Feature shards']"
    named = RuntimeError(f"OSError: [Errno 28] No space left on device: '/d/f.npy'{step}")
    assert is_disk_full(named) and as_disk_full(named).path == "/d/f.npy"
    assert (
        as_disk_full(RuntimeError(f"OSError: [Errno 28] No space left on device{step}")).path
        is None
    )
    remote = Exception(
        "Workflow failed. Causes: ... Traceback (most recent call last): ...\n"
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: /d/x.pb; No space "
        "left on device [while running 'WriteStatsOutput']"
    )
    assert is_disk_full(remote) and as_disk_full(remote).path == "/d/x.pb"
    quota = RuntimeError(f"OSError: [Errno {errno.EDQUOT}] Disk quota exceeded{step}")
    assert is_disk_full(quota) and as_disk_full(quota).quota
    # Beam's batch of renames (its sink's last step), raised here or wrapped by a worker.
    renames = BeamIOError(
        "Rename operation failed",
        {("/d/tmp/a", "/d/a"): OSError(errno.ENOSPC, NO_SPACE), ("/d/tmp/b", "/d/b"): None},
    )
    assert is_disk_full(renames)
    assert is_disk_full(RuntimeError(f"apache_beam.io.filesystem.BeamIOError: {renames}{step}"))
    for other in (
        BeamIOError("Delete operation failed", {"/d/a": OSError(errno.EACCES, "Permission")}),
        RuntimeError(f"ValueError: no space left for the label{step}"),
        RuntimeError(f"OSError: [Errno 13] Permission denied: '/d/f.npy'{step}"),
        RuntimeError(f"ResourceExhaustedError: OOM when allocating tensor{step}"),
        UsageError("cannot read w.npy: OSError: [Errno 28] No space left on device"),
        # The phrase inside another failure's text: a file named after it, a quoted log line.
        FileNotFoundError(2, "No such file or directory", "/x/[Errno 28] No space left on device"),
        RuntimeError("ValueError: cannot parse 'OSError: [Errno 28] No space left on device'"),
        Exception("a log line quoted: ResourceExhaustedError: /d/x.pb; No space left on device"),
    ):
        assert not is_disk_full(other), other


def test_import_weights_as_a_process_keeps_the_earlier_model(python, repo_root, disk, tmp_path):
    """The command imports the full-size network (244 MB) onto a disk with 8 MB free: one
    line, status 5, none of TensorFlow's log lines about the disk, the earlier model whole."""
    weights = write_caffemodel(tmp_path / "bvlc_alexnet.caffemodel", random_weights(seed=1))
    output = disk / "bvlc_alexnet.keras"
    output.write_bytes(b"the earlier model")
    filler = fill(disk, 8_000_000)
    result = subprocess.run(
        [python, "import_weights.py", "--weights", weights, "--output", output],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    error = assert_disk_full(result, output, f"{output} is as it was")
    assert "it needs about 24" in error, error
    others = result.stderr.replace(error, "")
    assert "No space left" not in others and "Disk quota" not in others, others
    assert not temporaries(disk)
    assert output.read_bytes() == b"the earlier model"
    filler.unlink()


@pytest.mark.slow
def test_a_worker_whose_scratch_folder_is_full(
    synthetic_records, python, repo_root, disk, tmp_path
):
    """Two workers; the non-chief's scratch folder, where its part of each checkpoint goes, on
    a full disk (its TMPDIR). It stops on its first checkpoint with one line naming it, status
    5, its scratch folder removed; the chief, whose checkpoint was whole, reports the worker
    lost and the checkpoint that every worker's rerun resumes from."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    model_dir = tmp_path / "model"
    arguments = ["--data_dir", synthetic_records, "--model_dir", model_dir, *tiny_flags()]
    filler = fill(disk, 3 * PAGE)  # Python's tempfile takes a folder only if it can write there
    workers = [
        Worker(python, repo_root, arguments, cluster, index, folder)
        for index, folder in enumerate((tmp_path, disk))
    ]
    try:
        codes = [worker.finish(timeout=300) for worker in workers]
    finally:
        stop_cluster(workers)
    chief, other = (worker.output for worker in workers)
    assert codes == [PeerLost.exit_code, DiskFull.exit_code], [chief[-3000:], other[-3000:]]
    result = subprocess.CompletedProcess(arguments, codes[1], "", other)
    error = assert_disk_full(
        result, disk / "alexnet-worker-", "rerun every worker, which resume from the latest"
    )
    assert "/checkpoints/ckpt-1 (it needs about " in error, error
    assert not list(disk.glob("alexnet-worker-*"))
    resumed = f"rerunning every worker resumes from {model_dir / 'checkpoints' / 'ckpt-1'} "
    assert f"error: lost worker 1 ({workers[1].address})" in chief and resumed in chief, chief
    assert "Traceback" not in chief
    filler.unlink()
