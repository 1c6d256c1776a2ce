"""The loop of a training run: the state a checkpoint keeps (`LoopState`), the steps of an
epoch and its end (validation, the schedule, history, the best model, the checkpoint), a
SIGTERM agreed on by every worker, and the checks that a checkpoint holds good weights."""

import dataclasses
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import history, input_pipeline
from alexnet_keras.model import values_bytes
from alexnet_keras.progress import progress_bar
from alexnet_keras.schedules import ValidationTracker, learning_rate_at
from alexnet_keras.signals import SigtermFlag
from alexnet_keras.steps import StepSums
from alexnet_keras.summaries import SummaryLog
from alexnet_keras_base.disk_full import new_entries_removed_on_disk_full, writing
from alexnet_keras_base.errors import Preempted, TrainingDiverged, UsageError
from alexnet_keras_base.files import replaced_atomically
from alexnet_keras_base.layout import RunDir
from alexnet_keras_base.quiet import (
    DISK_FULL_LOGS,
    native_stderr_without,
)

# Trained AlexNet weights are of order 0.01 to 1. A weight beyond this bound has blown up even
# while the loss still looks finite (a huge update can silence every ReLU and leave a constant
# loss), so a checkpoint holding one is not a "good" checkpoint to resume from.
MAX_ABS_WEIGHT = 1e4


def save_model(model, path):
    with replaced_atomically(path, needed_bytes=values_bytes(model.weights)) as temporary:
        model.save(temporary)


class LoopState:
    """The loop's state that a restart needs, besides the model and the optimizer: the steps
    done, the epochs whose end is done, the running sums of the epoch in progress and the
    validation tracker. Variables, created in the strategy's scope, and checkpointed under the
    keys of `checkpoint_items`, which existing checkpoints use: keep them."""

    def __init__(self, config):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)  # training steps done
        # Epochs whose end (validation, schedule, history, best model) is done.
        self.epochs_ended = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_sums = {
            field.name: tf.Variable(0.0, dtype=tf.float64, trainable=False)
            for field in dataclasses.fields(StepSums)
        }
        self.epoch_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.tracker = ValidationTracker(config)

    def checkpoint_items(self):
        return {
            "step": self.step,
            "epochs_ended": self.epochs_ended,
            "epoch_seconds": self.epoch_seconds,
            **self.tracker.checkpoint_items(),
            **{f"epoch_{name}": variable for name, variable in self.epoch_sums.items()},
        }

    def running_sums(self):
        """The training sums of the epoch in progress, as of the last checkpoint or step."""
        return StepSums(
            **{name: float(variable.numpy()) for name, variable in self.epoch_sums.items()}
        )

    def keep_running_sums(self, sums, seconds):
        for name, value in dataclasses.asdict(sums).items():
            self.epoch_sums[name].assign(value)
        self.epoch_seconds.assign(seconds)


@dataclasses.dataclass
class TrainingLoop:
    """What the loop carries from step to step. Everything a restart needs is in `manager`'s
    checkpoint: the model, the optimizer and `state`."""

    config: object
    model: keras.Model
    optimizer: object
    train_step: object
    eval_step: object
    manager: tf.train.CheckpointManager
    state: LoopState
    steps_per_epoch: int
    multi_worker: bool
    sigterm: SigtermFlag
    progress: object = None
    log: object = print

    def stop_request(self):
        return tf.constant(1.0 if self.sigterm.raised else 0.0)

    def stop_agreed(self, outputs):
        """True when the run must save and exit. Across workers, only the count summed within
        the step is the same everywhere; on one machine the flag itself is."""
        if self.multi_worker:
            return float(outputs["stop_requests"]) > 0
        return self.sigterm.raised

    def save(self, sums, seconds, learning_rate):
        """Checkpoints the loop, with the epoch's running `sums` and `seconds`, unless the
        weights blew up."""
        _check_weights_before_saving(
            self.model, int(self.state.step.numpy()), self.manager, learning_rate
        )
        self.state.keep_running_sums(sums, seconds)
        # A full disk leaves the checkpoint before as the latest, and no part of this one.
        number = int(self.manager.checkpoint.save_counter.numpy()) + 1
        needed = values_bytes(self.model.weights + self.optimizer.variables)
        with (
            new_entries_removed_on_disk_full(self.manager.directory),
            writing(f"{self.manager.directory}/ckpt-{number}", needed),
            native_stderr_without(DISK_FULL_LOGS),
        ):
            return self.manager.save()

    def preempted(self, sums, seconds, learning_rate, during):
        self.save(sums, seconds, learning_rate)
        return Preempted(
            f"SIGTERM: saved a checkpoint at step {int(self.state.step.numpy())} "
            f"{during} in {self.manager.directory}; run the same command to resume"
        )


def _check_weights_before_saving(model, step, manager, learning_rate):
    """Raises TrainingDiverged, so nothing is saved, when a weight is non-finite or absurd."""
    # `abs(w) <= bound` is False for NaN as well as for infinities and huge values.
    if all(
        bool(tf.reduce_all(tf.abs(weight.value) <= MAX_ABS_WEIGHT))
        for weight in model.trainable_weights
    ):
        return
    raise TrainingDiverged(
        f"the weights became non-finite or larger than {MAX_ABS_WEIGHT:g} by step {step}; "
        f"stopped without saving, so the last good checkpoint in {manager.directory} is kept. "
        f"Lower --learning_rate (now {learning_rate:g}) or check the data."
    )


def _train_to_epoch_end(loop, epoch, train_iterator, train_pattern):
    """Runs the steps left in `epoch`; returns the epoch's training sums and seconds, both
    including the part done before a restart."""
    config = loop.config
    epoch_end = (epoch + 1) * loop.steps_per_epoch
    # The step and the plateau rate are read from their variables once per epoch: reading a
    # variable each step would be a device-to-host copy on GPUs.
    current = int(loop.state.step.numpy())
    plateau_rate = float(loop.state.tracker.rate.numpy())
    sums, seconds = loop.state.running_sums(), float(loop.state.epoch_seconds.numpy())
    start = time.perf_counter() - seconds
    with progress_bar(loop.progress, epoch_end - current, f"epoch {epoch + 1}") as bar:
        while current < epoch_end:
            rate = learning_rate_at(config, current, loop.steps_per_epoch, plateau_rate)
            loop.optimizer.learning_rate = rate
            try:
                batch = next(train_iterator)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
                raise _describe_data_error(error, train_pattern) from None
            outputs = loop.train_step(batch, loop.stop_request())
            step_sums = StepSums.of_step(outputs)
            if not np.isfinite(step_sums.loss):
                raise TrainingDiverged(
                    f"the loss became {step_sums.loss} at step {current + 1}; stopped without "
                    f"saving, so the last good checkpoint in {loop.manager.directory} is kept. "
                    f"Lower --learning_rate (now {rate:g}) or check the data."
                )
            current += 1
            loop.state.step.assign(current)
            sums += step_sums
            bar.update(1)
            bar.set_postfix(
                loss=f"{sums.mean_loss:.3f}", top1=f"{1 - sums.top1_error:.3f}", lr=f"{rate:.2g}"
            )
            if loop.stop_agreed(outputs):
                raise loop.preempted(sums, time.perf_counter() - start, rate, "during training")
            if current % config.checkpoint_every_steps == 0:
                loop.save(sums, time.perf_counter() - start, rate)
    return sums, time.perf_counter() - start


def _validate(loop, epoch, validation, val_batches, train_sums, train_seconds, learning_rate):
    """Validation sums of `epoch`. A SIGTERM here saves the training state at the epoch's
    last step; the resumed run validates the epoch again."""
    sums = StepSums()
    with progress_bar(loop.progress, val_batches, f"validation {epoch + 1}") as bar:
        for _ in range(val_batches):
            outputs = loop.eval_step(next(validation), loop.stop_request())
            sums += StepSums.of_step(outputs)
            bar.update(1)
            if loop.stop_agreed(outputs):
                raise loop.preempted(train_sums, train_seconds, learning_rate, "during validation")
    return sums


def run_epochs(loop, data, outputs):
    """Trains and ends every epoch not yet ended; returns their EpochResults."""
    config, results = loop.config, []
    total_steps = config.epochs * loop.steps_per_epoch
    rows = history.read_history(outputs.model_dir, int(loop.state.epochs_ended.numpy()))
    while (epoch := int(loop.state.epochs_ended.numpy())) < config.epochs:
        train_sums, seconds = _train_to_epoch_end(
            loop, epoch, data.train_iterator, data.train_pattern
        )
        # The rate of the epoch's last step, also when a restart left only the epoch end.
        learning_rate = learning_rate_at(
            config,
            (epoch + 1) * loop.steps_per_epoch - 1,
            loop.steps_per_epoch,
            float(loop.state.tracker.rate.numpy()),
        )
        val_sums = _validate(
            loop, epoch, data.validation, data.val_batches, train_sums, seconds, learning_rate
        )
        verdict = loop.state.tracker.end_epoch(val_sums.top1_error)
        result = history.EpochResult(
            epoch=epoch,
            train_loss=train_sums.mean_loss,
            train_top1_error=train_sums.top1_error,
            train_top5_error=train_sums.top5_error,
            val_loss=val_sums.mean_loss,
            val_top1_error=val_sums.top1_error,
            val_top5_error=val_sums.top5_error,
            learning_rate=learning_rate,
            images_per_second=train_sums.examples / seconds,
            seconds=seconds,
        )
        # The outputs come before the checkpoint that marks the epoch as ended: a restart
        # between the two redoes the epoch end, which rewrites the same row and best model.
        if outputs.chief:
            rows = [row for row in rows if int(row["epoch"]) < epoch]
            rows.append(dataclasses.asdict(result))
            history.write_history(outputs.model_dir, rows)
            history.plot_training_curves(rows, RunDir(outputs.model_dir).curves_file)
            if verdict.improved:
                save_model(loop.model, RunDir(outputs.model_dir).model_file(best=True))
        scalars = {
            name: value
            for name, value in dataclasses.asdict(result).items()
            if name not in ("epoch", "seconds")
        }
        with outputs.summaries.writing(scalars, step=int(loop.state.step.numpy())):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        loop.state.epochs_ended.assign(epoch + 1)
        loop.save(StepSums(), 0.0, learning_rate)
        if verdict.rate_reduced:
            loop.log(
                f"validation top-1 error has not improved for {config.plateau_patience} "
                f"epochs: learning rate divided by {1 / config.plateau_factor:g}"
            )
        remaining = (total_steps - int(loop.state.step.numpy())) / loop.steps_per_epoch
        loop.log(history.describe_epoch(result, config.epochs, eta_seconds=remaining * seconds))
        results.append(result)
    return results


@dataclasses.dataclass
class EpochData:
    train_iterator: object
    train_pattern: str
    validation: object  # an iterator over the validation split, repeated
    val_batches: int  # one pass


@dataclasses.dataclass
class Outputs:
    model_dir: pathlib.Path
    chief: bool
    summaries: SummaryLog


def _describe_data_error(error, train_pattern):
    """tf.data's error does not say which file is bad: find it. Only called for errors
    raised while reading the next batch, never for the step's own errors."""
    culprit = input_pipeline.find_corrupt_record(train_pattern)
    detail = culprit or error.message.splitlines()[0]
    return UsageError(
        f"unreadable training data: {detail}. Convert the images again with data/build_tfrecords.py"
    )
