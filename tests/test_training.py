"""Training on real TFRecords: replicas, workers, resume, SIGTERM, NaN, bad usage."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import distribute, schedules, steps, training, training_loop
from alexnet_keras.optimizer import is_decayed
from alexnet_keras_base import errors
from alexnet_keras_base.config import PRESETS

# A small network and schedule that still has every layer of the paper's.
TINY = PRESETS["demo"].replace(
    width_multiplier=0.125,
    epochs=2,
    global_batch_size=8,
    checkpoint_every_steps=3,
    shuffle_buffer=64,
    warmup_epochs=0.0,
)


def tiny_flags(config=TINY):
    return [
        "--width_multiplier",
        str(config.width_multiplier),
        "--epochs",
        str(config.epochs),
        "--global_batch_size",
        str(config.global_batch_size),
        "--checkpoint_every_steps",
        str(config.checkpoint_every_steps),
        "--shuffle_buffer",
        str(config.shuffle_buffer),
        "--config",
        "demo",
        "--warmup_epochs",
        "0",
        "--no_progress",
    ]


def run_train(python, repo_root, *arguments, env=None, timeout=600):
    return subprocess.run(
        [python, "train.py", *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def final_step(output):
    for line in output.splitlines():
        if line.startswith("finished at step"):
            return int(line.split()[3].rstrip(";"))
    raise AssertionError(f"no 'finished at step' line in:\n{output[-3000:]}")


def checkpoint_value(checkpoint_path, name):
    """A variable of the loop as saved in a checkpoint (`step`, `plateau_rate`...)."""
    return tf.train.load_variable(checkpoint_path, f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def latest_checkpoint(model_dir):
    return tf.train.latest_checkpoint(str(model_dir / "checkpoints"))


def steps_per_epoch(records, batch):
    info = json.loads((records / "dataset.json").read_text())
    return info["num_examples"]["train"] // batch


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Worker:
    """A train.py process of a local cluster, its output collected as it comes. `launcher`
    comes before the command (`ip netns exec NS` runs it in a network namespace)."""

    def __init__(self, python, repo_root, arguments, cluster, index, temporary_dir, launcher=()):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        self.address = cluster["worker"][index]
        self.process = subprocess.Popen(
            [*launcher, python, "train.py", *map(str, arguments)],
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "TF_CONFIG": tf_config,
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(temporary_dir),
            },
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait_for(self, text, timeout=300):
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never came:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout=600):
        self.process.wait(timeout=timeout)
        self.reader.join()
        return self.process.returncode


def start_cluster(python, repo_root, arguments, temporary_dir):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    return [
        Worker(python, repo_root, arguments, cluster, index, temporary_dir) for index in range(2)
    ]


def stop_cluster(workers):
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.finish()


def run_cluster(python, repo_root, arguments, temporary_dir, timeout=600):
    """Two workers to the end: (exit codes, outputs)."""
    workers = start_cluster(python, repo_root, arguments, temporary_dir)
    try:
        codes = [worker.finish(timeout=timeout) for worker in workers]
    finally:
        stop_cluster(workers)
    return codes, [worker.output for worker in workers]


def lose_worker_1(python, repo_root, arguments, temporary_dir, when, timeout):
    """Two workers; worker 1 killed with -9 once `when(workers)` has returned. Worker 0 must
    exit with PeerLost's status, without a traceback, printing one 'error: lost' line.
    Returns (that line, worker 0's output, worker 1's address)."""
    workers = start_cluster(python, repo_root, arguments, temporary_dir)
    try:
        when(workers)
        workers[1].process.send_signal(signal.SIGKILL)
        survivor_code = workers[0].finish(timeout=timeout)
    finally:
        stop_cluster(workers)
    survivor = workers[0].output
    assert survivor_code == errors.PeerLost.exit_code, survivor[-3000:]
    assert "Traceback" not in survivor, survivor[-3000:]
    (message,) = [line for line in survivor.splitlines() if line.startswith("error: lost")]
    return message, survivor, workers[1].address


def scratch_folders(temporary_dir):
    """The folders non-chief workers write their checkpoints to (see training.train)."""
    return list(temporary_dir.glob("alexnet-worker-*"))


def resumed_step(output):
    for line in output.splitlines():
        if line.startswith("resumed from"):
            return int(line.split(" at step ")[1].split()[0])
    raise AssertionError(f"no 'resumed from' line in:\n{output[-3000:]}")


def fingerprint(output):
    return [
        line.split()[-1] for line in output.splitlines() if line.startswith("finished at step")
    ][0]


@pytest.mark.slow
def test_two_local_workers_resume_together_after_kill_9_and_sigterm(
    synthetic_records, tmp_path, python, repo_root
):
    """MultiWorkerMirroredStrategy on 127.0.0.1: worker 1 killed with -9 after the first
    checkpoint stops worker 0 with the retryable status, naming the lost worker and the
    checkpoint a rerun resumes from, without a traceback; both workers rerun resume at that
    step; a SIGTERM to worker 1 alone stops both with 143 and one checkpoint; the rerun resumes
    from it and ends with identical weights on both."""
    model_dir, temporary_dir = tmp_path / "model", tmp_path / "worker_tmp"
    temporary_dir.mkdir()
    arguments = ["--data_dir", synthetic_records, "--model_dir", model_dir, *tiny_flags()]
    total_steps = 2 * steps_per_epoch(synthetic_records, TINY.global_batch_size)

    def after_the_first_checkpoint(workers):
        wait_for_checkpoint(model_dir, workers[0].process)
        assert all(worker.process.poll() is None for worker in workers), "finished too early"

    message, _, lost_address = lose_worker_1(
        python, repo_root, arguments, temporary_dir, after_the_first_checkpoint, timeout=120
    )
    latest = latest_checkpoint(model_dir)
    assert message.startswith(
        f"error: lost worker 1 ({lost_address}) of the cluster during step "
    ), message
    lost_step = int(message.split("during step ")[1].split()[0])
    assert message.endswith(
        f"rerunning every worker resumes from {latest} (step {checkpoint_value(latest, 'step')})"
    ), message
    assert checkpoint_value(latest, "step") < lost_step <= total_steps
    for folder in scratch_folders(temporary_dir):  # kill -9 gives no chance to clean up
        shutil.rmtree(folder)

    # Both restore the chief's checkpoint; a SIGTERM to the non-chief stops the cluster.
    workers = start_cluster(python, repo_root, arguments, temporary_dir)
    try:
        workers[1].wait_for("resumed from")
        workers[1].process.send_signal(signal.SIGTERM)
        codes = [worker.finish(timeout=300) for worker in workers]
    finally:
        stop_cluster(workers)
    outputs = [worker.output for worker in workers]
    assert codes == [errors.Preempted.exit_code] * 2, [output[-2000:] for output in outputs]
    first_resume = resumed_step(outputs[0])
    assert first_resume > 0 and resumed_step(outputs[1]) == first_resume
    assert first_resume == checkpoint_value(latest, "step")
    saved = [int(output.split("saved a checkpoint at step ")[1].split()[0]) for output in outputs]
    assert saved[0] == saved[1] > first_resume
    assert checkpoint_value(latest_checkpoint(model_dir), "step") == saved[0]
    assert not scratch_folders(temporary_dir), "a worker left its scratch folder"

    codes, outputs = run_cluster(python, repo_root, arguments, temporary_dir)
    assert codes == [0, 0], [output[-2000:] for output in outputs]
    assert [resumed_step(output) for output in outputs] == saved
    assert [final_step(output) for output in outputs] == [total_steps] * 2
    assert fingerprint(outputs[0]) == fingerprint(outputs[1])
    history = (model_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]
    assert (model_dir / "alexnet.keras").exists()
    assert not scratch_folders(temporary_dir)
    # Only the chief writes to model_dir: no other worker's checkpoints or logs there.
    assert sorted(path.name for path in model_dir.iterdir()) == [
        "alexnet.keras",
        "alexnet_best.keras",
        "checkpoints",
        "config.json",
        "history.csv",
        "logs",
        "run.json",
        "training_curves.png",
    ]


@pytest.mark.slow
def test_a_worker_lost_while_the_cluster_starts_stops_the_other_with_the_retryable_status(
    synthetic_records, tmp_path, python, repo_root
):
    """Worker 1 killed with -9 once the strategy is made, before the first step: worker 0
    fails in the broadcast of the variables' first values, and says so as for a step."""
    temporary_dir = tmp_path / "worker_tmp"
    temporary_dir.mkdir()
    arguments = ["--data_dir", synthetic_records, "--model_dir", tmp_path / "model", *tiny_flags()]
    message, survivor, lost_address = lose_worker_1(
        python,
        repo_root,
        arguments,
        temporary_dir,
        lambda workers: workers[1].wait_for("strategy: MultiWorkerMirroredStrategy"),
        timeout=300,
    )
    assert "finished at step" not in survivor and "epoch 1/" not in survivor, survivor[-3000:]
    assert message.startswith(
        f"error: lost worker 1 ({lost_address}) of the cluster during start-up ("
    ), message
    assert message.endswith("no checkpoint was saved yet: rerunning every worker starts over")


@pytest.mark.slow
def test_a_cluster_that_never_forms_ends_each_waiting_worker_with_the_retryable_status(
    synthetic_records, tmp_path, python, repo_root
):
    """Two clusters, each with one of its two workers never started. Worker 1 waits for the
    host of the coordination service, worker 0: TensorFlow would let it try to register for
    an hour, then end with a traceback and status 1. Worker 0 waits for worker 1: TensorFlow
    would wait an hour, deaf to SIGTERM. Each ends with 200 once
    --cluster_start_timeout_seconds has passed, naming the worker nothing answers at."""
    temporary_dir = tmp_path / "worker_tmp"
    temporary_dir.mkdir()
    workers, clusters = [], []
    for index in (0, 1):
        clusters.append({"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]})
        arguments = ["--data_dir", synthetic_records, "--model_dir", tmp_path / f"model{index}"]
        arguments += [*tiny_flags(), "--cluster_start_timeout_seconds", "3"]
        workers.append(Worker(python, repo_root, arguments, clusters[-1], index, temporary_dir))
    try:
        codes = [worker.finish(timeout=180) for worker in workers]
    finally:
        stop_cluster(workers)
    for index, worker in enumerate(workers):
        absent = clusters[index]["worker"][1 - index]
        errors = [line for line in worker.output.splitlines() if line.startswith("error:")]
        assert codes[index] == 200, worker.output[-3000:]
        assert errors == [
            f"error: the cluster did not form within 3 s: worker {1 - index} ({absent}): "
            f"nothing listens there; start every worker that TF_CONFIG names (or give them "
            f"longer with --cluster_start_timeout_seconds); no checkpoint was saved yet: "
            f"rerunning every worker starts over"
        ], worker.output[-3000:]
        assert "Traceback" not in worker.output and "strategy:" not in worker.output


@pytest.mark.slow
def test_a_worker_failing_on_its_own_error_fails_permanently(
    synthetic_records, tmp_path, python, repo_root
):
    """Not a lost peer: the training shards that only the chief reads (make_train_dataset gives
    worker i every other file from i) hold labels outside the classes. The chief stops on
    TensorFlow's own error with a permanent status (below 128), so a job controller does not
    restart the job; worker 1 reports the chief lost, which is what it sees."""
    data_dir = tmp_path / "records"
    shutil.copytree(synthetic_records, data_dir)
    for shard in sorted(data_dir.glob("train-*.tfrecord"))[0::2]:
        examples = [
            tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(shard))
        ]
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for example in examples:
                example.features.feature["image/class/label"].int64_list.value[:] = [9]
                writer.write(example.SerializeToString())
    arguments = ["--data_dir", data_dir, "--model_dir", tmp_path / "model", *tiny_flags()]
    workers = start_cluster(python, repo_root, arguments, tmp_path)
    try:
        codes = [worker.finish(timeout=300) for worker in workers]
    finally:
        stop_cluster(workers)
    chief, other = (worker.output for worker in workers)
    assert 0 < codes[0] < 128, chief[-3000:]
    assert "InvalidArgumentError" in chief and "label value of 9" in chief, chief[-3000:]
    assert "error: lost" not in chief
    assert codes[1] == errors.PeerLost.exit_code, other[-3000:]
    assert f"error: lost worker 0 ({workers[0].address})" in other, other[-3000:]


def wait_for_checkpoint(model_dir, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        state = tf.train.get_checkpoint_state(str(model_dir / "checkpoints"))
        if state and state.model_checkpoint_path:
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def kill_9_after_the_first_checkpoint(python, repo_root, arguments, model_dir):
    """Runs train.py with `arguments` and kills it with -9 once a checkpoint is in model_dir."""
    process = subprocess.Popen(
        [python, "train.py", *map(str, arguments)],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(model_dir, process)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_finishes_with_the_same_step_count(
    synthetic_records, tmp_path, python, repo_root
):
    model_dir = tmp_path / "model"
    arguments = ["--data_dir", synthetic_records, "--model_dir", model_dir, *tiny_flags()]
    kill_9_after_the_first_checkpoint(python, repo_root, arguments, model_dir)
    result = run_train(python, repo_root, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    assert final_step(result.stdout) == 2 * steps_per_epoch(synthetic_records, 8)
    # The distributed input's iterators are made once, without TensorFlow's note about them.
    assert "GeneratorDatasetOp" not in result.stderr, result.stderr[-3000:]
    history = (model_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(synthetic_records, tmp_path, python, repo_root):
    model_dir = tmp_path / "model"
    arguments = [
        "--data_dir",
        synthetic_records,
        "--model_dir",
        model_dir,
        *tiny_flags(TINY.replace(epochs=20, checkpoint_every_steps=2)),
    ]
    process = subprocess.Popen(
        [python, "train.py", *map(str, arguments)],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(model_dir, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == errors.Preempted.exit_code, stderr[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in stderr
    saved_step = int(stderr.split("checkpoint at step ")[1].split()[0])
    assert checkpoint_value(latest_checkpoint(model_dir), "step") == saved_step
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_divergence_stops_at_a_known_step_and_keeps_the_last_good_checkpoint(
    synthetic_records, tmp_path, repo_root, capsys
):
    """A learning rate of inf (or 1e30) turns the weights non-finite (or absurd) in the first
    update of the resumed run, on every CPU. With a checkpoint after every step, that step's
    checkpoint must not be written; with a checkpoint every 3 steps, the NaN loss of the next
    step stops the run. Either way the checkpoint of the first, good run stays the latest."""
    sys.path.insert(0, str(repo_root))
    import train as train_script

    good_dir = tmp_path / "good"
    training.train(TINY.replace(epochs=1), synthetic_records, good_dir, log=lambda m: None)
    first_steps = steps_per_epoch(synthetic_records, TINY.global_batch_size)
    good = pathlib.Path(latest_checkpoint(good_dir)).name
    assert checkpoint_value(latest_checkpoint(good_dir), "step") == first_steps
    cases = [
        ("inf", 1, f"the weights became non-finite or larger than 10000 by step {first_steps + 1}"),
        (
            "1e30",
            1,
            f"the weights became non-finite or larger than 10000 by step {first_steps + 1}",
        ),
        ("inf", 3, f"at step {first_steps + 2}"),
    ]
    for index, (learning_rate, every, message) in enumerate(cases):
        model_dir = tmp_path / f"diverging_{index}"
        shutil.copytree(good_dir, model_dir)
        flags = tiny_flags(TINY.replace(epochs=2, checkpoint_every_steps=every))
        code = train_script.main(
            [
                "--data_dir",
                str(synthetic_records),
                "--model_dir",
                str(model_dir),
                *flags,
                "--learning_rate",
                learning_rate,
            ]
        )
        stderr = capsys.readouterr().err
        assert code == 3, stderr[-3000:]
        latest = latest_checkpoint(model_dir)
        assert latest == str(model_dir / "checkpoints" / good), (index, latest)
        assert message in stderr and "last good checkpoint" in stderr, stderr[-3000:]


class SimulatedCrash(Exception):
    """Stands for a kill -9: the run stops where it is, with no chance to save."""


def interrupting_progress(target, at_update, how):
    """train()'s `progress` argument: quiet bars (tqdm's interface), except that the bar
    named `target` ('epoch 1', 'validation 2'...) interrupts the run at its `at_update`-th
    update, with a real SIGTERM to this process or a SimulatedCrash."""

    class Bar:
        def __init__(self, armed):
            self.armed, self.updates = armed, 0

        def update(self, count):
            self.updates += count
            if self.armed and self.updates == at_update:
                if how == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    raise SimulatedCrash(target)

        def set_postfix(self, **values):
            pass

        def close(self):
            pass

    return lambda total, description: Bar(description == target)


TRACKER_STATE = ("plateau_rate", "best_error", "bad_epochs", "reductions")
TIMING = ("seconds", "images_per_second")


def rows_without_timing(model_dir):
    rows = (model_dir / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [
        {name: value for name, value in zip(header, row.split(",")) if name not in TIMING}
        for row in rows[1:]
    ]


# The plateau schedule with patience 1: an epoch end done twice (a second update with the same
# error) would divide the rate; one skipped would leave a history row missing.
PLATEAU = TINY.replace(deterministic=True, lr_schedule="plateau", plateau_patience=1)


@pytest.fixture(scope="module")
def uninterrupted_run(synthetic_records, tmp_path_factory):
    """The model folder of a PLATEAU run that nothing interrupted."""
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    training.train(PLATEAU, synthetic_records, model_dir, log=lambda m: None)
    return model_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,at_update,how",
    [
        ("epoch 1", 9, "sigterm"),  # on the last step of epoch 1
        ("validation 2", 1, "sigterm"),  # during the last epoch's validation
        ("validation 2", 1, "crash"),  # kill -9 during validation, after the step-18 checkpoint
    ],
)
def test_interrupted_epoch_end_is_done_exactly_once_on_resume(
    target, at_update, how, synthetic_records, uninterrupted_run, tmp_path
):
    config, reference_dir, model_dir = PLATEAU, uninterrupted_run, tmp_path / "interrupted"
    assert steps_per_epoch(synthetic_records, config.global_batch_size) == 9

    messages = []
    expected = errors.Preempted if how == "sigterm" else SimulatedCrash
    with pytest.raises(expected):
        training.train(
            config,
            synthetic_records,
            model_dir,
            log=messages.append,
            progress=interrupting_progress(target, at_update, how),
        )
    if how == "sigterm":  # the checkpoint holds the epoch's last step
        saved = latest_checkpoint(model_dir)
        assert checkpoint_value(saved, "step") == (9 if target == "epoch 1" else 18)
        assert checkpoint_value(saved, "epochs_ended") == (0 if target == "epoch 1" else 1)
    training.train(config, synthetic_records, model_dir, log=messages.append)

    for epoch in (1, 2):  # each epoch ended once, over both runs
        assert sum(m.startswith(f"epoch {epoch}/2:") for m in messages) == 1, messages
    reference_rows, rows = rows_without_timing(reference_dir), rows_without_timing(model_dir)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    # The first epoch's row, training sums included, is the uninterrupted run's.
    assert rows[0] == reference_rows[0]
    assert rows[1]["learning_rate"] == reference_rows[1]["learning_rate"]
    if target != "epoch 1":  # interrupted after the last step: everything is the reference's
        assert rows == reference_rows
        reference, resumed = latest_checkpoint(reference_dir), latest_checkpoint(model_dir)
        for name in TRACKER_STATE:
            assert checkpoint_value(resumed, name) == checkpoint_value(reference, name), name
        assert steps.weights_fingerprint(
            keras.models.load_model(model_dir / "alexnet.keras")
        ) == steps.weights_fingerprint(keras.models.load_model(reference_dir / "alexnet.keras"))


@pytest.mark.slow
def test_resume_keeps_config_json_records_resumes_and_refuses_other_precision(
    synthetic_records, tmp_path
):
    model_dir = tmp_path / "model"
    first = TINY.replace(epochs=1)
    training.train(first, synthetic_records, model_dir, log=lambda m: None)
    # float16 wraps the optimizer in a LossScaleOptimizer: refused before anything is built.
    with pytest.raises(
        errors.UsageError,
        match="trained with --mixed_precision off, and "
        "--mixed_precision float16 adds the loss scaling optimizer",
    ):
        training.train(
            first.replace(epochs=2, mixed_precision="float16"),
            synthetic_records,
            model_dir,
            log=lambda m: None,
        )
    # Without run.json's record of the settings, the verified restore still refuses it.
    run = json.loads((model_dir / "run.json").read_text())
    (model_dir / "run.json").write_text(json.dumps({"num_classes": run["num_classes"]}))
    with pytest.raises(errors.UsageError, match="does not match this model, optimizer"):
        training.train(
            first.replace(epochs=2, mixed_precision="float16"),
            synthetic_records,
            model_dir,
            log=lambda m: None,
        )
    (model_dir / "run.json").write_text(json.dumps(run))

    resumed = first.replace(epochs=2, learning_rate=first.learning_rate / 2)
    training.train(resumed, synthetic_records, model_dir, log=lambda m: None)
    assert json.loads((model_dir / "config.json").read_text()) == json.loads(first.to_json())
    resumes = json.loads((model_dir / "run.json").read_text())["resumes"]
    assert resumes == [
        {
            "step": 9,
            "replicas": 1,
            "config_changes": {"epochs": 2, "learning_rate": first.learning_rate / 2},
        }
    ]


def copy_records(records, destination, rewrite_train_example):
    """A copy of a converted dataset whose training examples go through
    `rewrite_train_example(tf.train.Example)`."""
    shutil.copytree(records, destination)
    for shard in destination.glob("train-*.tfrecord"):
        examples = [
            tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(shard))
        ]
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for example in examples:
                rewrite_train_example(example)
                writer.write(example.SerializeToString())
    return destination


@pytest.mark.slow
def test_only_data_errors_search_for_a_corrupt_record(synthetic_records, tmp_path):
    # A label outside the classes is an error of the step, not of reading: it surfaces as
    # TensorFlow's own error, and no shard is searched.
    def out_of_range(example):
        example.features.feature["image/class/label"].int64_list.value[:] = [9]

    bad_labels = copy_records(synthetic_records, tmp_path / "bad_labels", out_of_range)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value of 9"):
        training.train(
            TINY.replace(epochs=1), bad_labels, tmp_path / "model_labels", log=lambda m: None
        )

    # A corrupt image is a data error: the message names the file and record.
    def corrupt(example):
        example.features.feature["image/encoded"].bytes_list.value[:] = [b"\xff\xd8 not a jpeg"]

    bad_images = copy_records(synthetic_records, tmp_path / "bad_images", corrupt)
    with pytest.raises(
        errors.UsageError,
        match=r"unreadable training data: .*train-\d+-of-"
        r"\d+\.tfrecord: record 0",
    ):
        training.train(
            TINY.replace(epochs=1), bad_images, tmp_path / "model_images", log=lambda m: None
        )


@pytest.mark.slow
def test_an_internal_error_is_not_reported_as_a_usage_error(synthetic_records, tmp_path, repo_root):
    sys.path.insert(0, str(repo_root))
    import train as train_script

    data_dir = tmp_path / "records"
    shutil.copytree(synthetic_records, data_dir)
    info = json.loads((data_dir / "dataset.json").read_text())
    info["rgb_mean"] = info["rgb_mean"][:2]  # the converter never writes this
    (data_dir / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="expected 3 mean values") as raised:
        train_script.main(
            ["--data_dir", str(data_dir), "--model_dir", str(tmp_path / "model"), *tiny_flags()]
        )
    assert not isinstance(raised.value, errors.UsageError)


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no_labels", "has no labels.txt"),
        ("no_records", "has no train-*.tfrecord"),
        ("other_classes", "holds a checkpoint for 7 classes but the data has 4"),
        ("unknown_device", "unknown device '/gpu:7'"),
        ("indivisible_batch", "--global_batch_size 9 is not divisible by the 2 replicas"),
        ("model_dir_missing", "--model_dir is required"),
    ],
)
def test_bad_usage_gets_a_clear_message(
    case, message, synthetic_records, tmp_path, repo_root, capsys
):
    sys.path.insert(0, str(repo_root))
    import train as train_script

    data_dir, model_dir = tmp_path / "data", tmp_path / "model"
    extra = []
    if case == "missing":
        pass
    elif case == "empty":
        data_dir.mkdir()
    elif case in ("no_labels", "no_records"):
        data_dir.mkdir()
        (data_dir / "dataset.json").write_text((synthetic_records / "dataset.json").read_text())
        if case == "no_records":
            (data_dir / "labels.txt").write_text((synthetic_records / "labels.txt").read_text())
    else:
        data_dir = synthetic_records
    if case == "other_classes":
        (model_dir / "checkpoints").mkdir(parents=True)
        (model_dir / "run.json").write_text(json.dumps({"num_classes": 7}))
    if case == "unknown_device":
        extra = ["--devices", "/gpu:7"]
    if case == "indivisible_batch":
        extra = ["--devices", "/cpu:0,/cpu:1", "--global_batch_size", "9"]
    arguments = ["--data_dir", str(data_dir), *tiny_flags(), *extra]
    if case != "model_dir_missing":
        arguments += ["--model_dir", str(model_dir)]
    if case == "indivisible_batch":
        arguments += ["--global_batch_size", "9"]
    assert train_script.main(arguments) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_and_saves_float32_interfaces(
    precision, synthetic_records, tmp_path
):
    config = TINY.replace(epochs=1, mixed_precision=precision)
    results = training.train(config, synthetic_records, tmp_path / "model", log=lambda m: None)
    assert np.isfinite(results[0].train_loss)
    assert keras.config.dtype_policy().name == "float32"  # restored after training
    model = keras.models.load_model(tmp_path / "model" / "alexnet.keras")
    assert (
        model.get_layer("conv2").compute_dtype
        == {"float16": "float16", "bfloat16": "bfloat16"}[precision]
    )
    assert model.get_layer("norm1").compute_dtype == precision  # casts to float32 inside
    output = model(np.full((1, 227, 227, 3), 120.0, np.float32), training=False)
    assert output.dtype == tf.float32 and np.all(np.isfinite(output.numpy()))
    assert model.input.dtype == "float32"


@pytest.mark.slow
def test_xla_train_step_runs_on_the_cpu(synthetic_records, tmp_path):
    results = training.train(
        TINY.replace(epochs=1, xla=True), synthetic_records, tmp_path / "model", log=lambda m: None
    )
    assert np.isfinite(results[0].train_loss)


def test_learning_rate_schedules():
    config = PRESETS["paper"]
    assert schedules.learning_rate_at(config, 0, 100, 0.01) == 0.01
    step = config.replace(lr_schedule="step", step_epochs=2)
    assert schedules.learning_rate_at(step, 150, 100, 0.01) == 0.01
    assert abs(schedules.learning_rate_at(step, 250, 100, 0.01) - 0.001) < 1e-12
    cosine = config.replace(lr_schedule="cosine", epochs=10, warmup_epochs=1)
    assert schedules.learning_rate_at(cosine, 0, 100, 0.01) == pytest.approx(0.0001)
    assert schedules.learning_rate_at(cosine, 99, 100, 0.01) == pytest.approx(0.01)
    assert schedules.learning_rate_at(cosine, 999, 100, 0.01) < 1e-5
    tracker = schedules.ValidationTracker(config.replace(plateau_patience=2, max_lr_reductions=1))
    verdicts = [tracker.end_epoch(error) for error in (0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4)]
    assert [verdict.rate_reduced for verdict in verdicts] == [
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    assert [verdict.improved for verdict in verdicts] == [
        True,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
    ]
    assert float(tracker.rate.numpy()) == pytest.approx(0.001)
    # Under the step and cosine schedules the tracker still decides the best-model saves,
    # and never touches the rate.
    cosine_tracker = schedules.ValidationTracker(cosine.replace(plateau_patience=1))
    assert [cosine_tracker.end_epoch(error).improved for error in (0.5, 0.6, 0.4)] == [
        True,
        False,
        True,
    ]
    assert float(cosine_tracker.rate.numpy()) == cosine.learning_rate


def _weights_after_two_steps(config, initial_weights, images, labels, l2_on_the_tape):
    """The weights after two training steps from `initial_weights` (the second one goes
    through the momentum): either the project's step (`make_step_functions` with PaperSGD's
    fused update) on two replicas, or a reference written out here on one device: Keras' own
    SGD, the paper's L2 term 0.5 * weight_decay * sum(kernel ** 2) added to the loss on the
    tape."""
    devices = ["/cpu:0"] if l2_on_the_tape else ["/cpu:0", "/cpu:1"]
    strategy = distribute.select_strategy(devices)
    with strategy.scope():
        model = training.build_model(config, num_classes=4)
        model.set_weights(initial_weights)
        if l2_on_the_tape:
            optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
            optimizer.build(model.trainable_variables)
        else:
            optimizer = steps.build_optimizer(config, model)
    if not l2_on_the_tape:
        train_step, _ = steps.make_step_functions(strategy, model, optimizer, config)
        # Training batches are uint8 crops with their lighting shifts (none here), split
        # between the replicas.
        no_lighting = tf.zeros((images.shape[0], 3), tf.float32)
        batch = strategy.experimental_distribute_values_from_function(
            lambda context: tuple(
                tf.split(tensor, 2)[context.replica_id_in_sync_group]
                for tensor in (images, no_lighting, labels)
            )
        )
    for _ in range(2):
        if l2_on_the_tape:
            kernels = [w for w in model.trainable_variables if is_decayed(w)]
            with tf.GradientTape() as tape:
                logits = model(tf.cast(images, tf.float32), training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
                loss += (
                    0.5
                    * config.weight_decay
                    * tf.add_n([tf.reduce_sum(tf.square(kernel)) for kernel in kernels])
                )
            optimizer.apply(
                tape.gradient(loss, model.trainable_variables), model.trainable_variables
            )
        else:
            train_step(((batch[0], batch[1]), batch[2]), tf.constant(0.0))
    if not l2_on_the_tape:  # both replicas' copies were updated alike
        for weight in model.trainable_variables:
            first, second = strategy.experimental_local_results(weight.value)
            np.testing.assert_array_equal(first.numpy(), second.numpy())
    return [w.numpy() for w in model.trainable_variables]


def test_fused_update_with_weight_decay_equals_keras_sgd_with_the_l2_term_on_the_tape():
    # A decay large enough that its share of the update is far above float32 noise.
    config = TINY.replace(
        dropout_rate=0.0, weight_decay=0.05, learning_rate=0.05, global_batch_size=4
    )
    initial = training.build_model(config, num_classes=4).get_weights()
    rng = np.random.default_rng(3)
    images = tf.constant(rng.integers(0, 256, (4, 227, 227, 3)).astype(np.uint8))
    labels = tf.constant([0, 1, 2, 3])
    ours = _weights_after_two_steps(config, initial, images, labels, l2_on_the_tape=False)
    reference = _weights_after_two_steps(config, initial, images, labels, l2_on_the_tape=True)
    without_decay = _weights_after_two_steps(
        config.replace(weight_decay=0.0), initial, images, labels, l2_on_the_tape=False
    )
    for index, (one, two, plain) in enumerate(zip(ours, reference, without_decay)):
        np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6, err_msg=str(index))
        if one.ndim > 1:  # a kernel: the decay moved it, so the comparison above can fail
            assert np.abs(one - plain).max() > 100 * np.abs(one - two).max() + 1e-6, index


def test_the_loop_state_restores_checkpoints_written_with_todays_keys(tmp_path):
    """The loop's state is one object now; its variables keep the checkpoint keys that runs
    already on disk hold (a renamed key would leave a resumed run at step 0)."""
    integers = {"step": 1234, "epochs_ended": 7, "bad_epochs": 2, "reductions": 1}
    floats = {
        "epoch_seconds": 56.5,
        "plateau_rate": 0.001,
        "best_error": 0.42,
        "epoch_loss": 321.0,
        "epoch_top1_correct": 40.0,
        "epoch_top5_correct": 90.0,
        "epoch_examples": 100.0,
    }
    saved = {
        **{key: tf.Variable(value, dtype=tf.int64) for key, value in integers.items()},
        **{key: tf.Variable(value, dtype=tf.float64) for key, value in floats.items()},
    }
    path = tf.train.Checkpoint(**saved).save(str(tmp_path / "ckpt"))
    state = training_loop.LoopState(PRESETS["demo"])
    items = state.checkpoint_items()
    assert sorted(items) == sorted(saved)
    tf.train.Checkpoint(**items).restore(path).assert_consumed()
    assert {key: items[key].numpy() for key in saved} == {**integers, **floats}
    assert state.running_sums().examples == 100.0
