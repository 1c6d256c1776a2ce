"""The training job: the run folder's checkpoints and record, and the loop that trains, validates
and ends each epoch, under MirroredStrategy or MultiWorkerMirroredStrategy, surviving
preemption. The strategy and cluster are in `distribute.py`, the learning-rate schedules and
the validation tracker in `schedules.py`, the step functions and their metric sums in
`steps.py` (the weight decay is applied inside the optimizer's update, `PaperSGD`).

What a restart relies on: every worker restores the chief's latest checkpoint from
`model_dir`; the checkpoint holds the step, the epoch ends done so far and the running sums of
the epoch in progress, so an interrupted epoch end (validation, schedule, history, best model)
is done exactly once on resume; a SIGTERM is agreed on by all workers within one training or
validation step, so the whole cluster saves one checkpoint and exits with status 143.
"""

import dataclasses
import math
import pathlib
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import figures, finetune, history, input_pipeline
from alexnet_keras.distribute import (
    PEER_ERRORS,
    is_chief,
    peer_lost,
    select_strategy,
    watch_peers,
)
from alexnet_keras.model import LRN_PAPER, build_alexnet, mean_layer
from alexnet_keras.progress import progress_bar
from alexnet_keras.schedules import ValidationTracker, learning_rate_at
from alexnet_keras.signals import SigtermFlag
from alexnet_keras.steps import StepSums, build_optimizer, make_step_functions, weights_fingerprint
from alexnet_keras_base.errors import PeerLost, Preempted, TrainingDiverged, UsageError
from alexnet_keras_base.files import replaced_atomically
from alexnet_keras_base.layout import DataDir, RunDir
from alexnet_keras_base.quiet import DISTRIBUTED_ITERATOR_NOTE, native_stderr_without

__all__ = ["UsageError", "TrainingDiverged", "Preempted", "PeerLost", "train"]

# Trained AlexNet weights are of order 0.01 to 1. A weight beyond this bound has blown up even
# while the loss still looks finite (a huge update can silence every ReLU and leave a constant
# loss), so a checkpoint holding one is not a "good" checkpoint to resume from.
MAX_ABS_WEIGHT = 1e4


# === Data folder ===


def check_data_dir(data_dir):
    """Validates the converter's output folder; returns dataset.json's contents."""
    if not data_dir:
        raise UsageError("--data_dir is required (or omit it to train the demo)")
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"--data_dir {data_dir} does not exist")
    if not any(data_dir.iterdir()):
        raise UsageError(
            f"--data_dir {data_dir} is empty: convert images into it with data/build_tfrecords.py"
        )
    records = DataDir(data_dir)
    missing = [name for name in (DataDir.LABELS, DataDir.DATASET) if not (data_dir / name).exists()]
    if missing:
        raise UsageError(
            f"--data_dir {data_dir} has no {' or '.join(missing)}: is it the "
            f"output folder of data/build_tfrecords.py?"
        )
    for split in ("train", "validation"):
        if not list(data_dir.glob(DataDir.shard_glob(split))):
            raise UsageError(f"--data_dir {data_dir} has no {DataDir.shard_glob(split)} files")
    info = records.read_info()
    if len([label for label in records.read_labels() if label]) != info["num_classes"]:
        raise UsageError(f"{records.labels_file} and {DataDir.DATASET} disagree on the classes")
    return info


# === Model and steps ===


def build_model(config, num_classes, lrn=LRN_PAPER):
    """The network of a run, with the initial weights the run starts from (seeded by
    `config.seed`); call it inside the strategy's scope."""
    keras.utils.set_random_seed(config.seed)
    return build_alexnet(
        num_classes=num_classes,
        dropout_rate=config.dropout_rate,
        width_multiplier=config.width_multiplier,
        bias_init=config.bias_init,
        kernel_init=config.kernel_init,
        input_scale=config.input_scale,
        lrn=lrn,
    )


# === Checkpoints and the run's record ===


def _recorded_source(model_dir):
    """run.json's `init_from` record when `model_dir` holds checkpoints to resume, else None."""
    run_dir = RunDir(model_dir)
    run = run_dir.read_run()
    if run is None or tf.train.latest_checkpoint(str(run_dir.checkpoints_dir)) is None:
        return None
    return run.get("init_from")


def _restore_latest(checkpoint, checkpoint_dir):
    """Restores the latest checkpoint in `checkpoint_dir`, verifying that it fills every
    variable of the model, optimizer and loop; returns its path, or None when there is none."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest is None:
        return None
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UsageError(
            f"the checkpoint {latest} does not match this model, optimizer and "
            f"settings ({reason}): resume with the settings it was made with, or "
            f"use another --model_dir"
        ) from None
    return latest


def _check_workers_agree(strategy, start_step, model_dir):
    """Every worker must restore the same checkpoint, or replicas diverge and the workers run
    different numbers of steps until a collective hangs."""
    local = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([start_step], tf.int64)
    )
    every_start = strategy.gather(local, axis=0).numpy()  # the same on every worker
    lowest, highest = int(every_start.min()), int(every_start.max())
    if lowest != highest:
        raise UsageError(
            f"the workers found different checkpoints in --model_dir {model_dir} (steps "
            f"{lowest} to {highest}): --model_dir must be one shared folder that every worker "
            f"reads"
        )


def _save_model(model, path):
    with replaced_atomically(path) as temporary:
        model.save(temporary)


# === The loop ===


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


def _run_epochs(loop, data, outputs):
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
                _save_model(loop.model, RunDir(outputs.model_dir).model_file(best=True))
        with outputs.summary_writer.as_default(step=int(loop.state.step.numpy())):
            for name, value in dataclasses.asdict(result).items():
                if name not in ("epoch", "seconds"):
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
class _Data:
    train_iterator: object
    train_pattern: str
    validation: object  # an iterator over the validation split, repeated
    val_batches: int  # one pass


@dataclasses.dataclass
class _Outputs:
    model_dir: pathlib.Path
    chief: bool
    summary_writer: object


# === The job ===


def train(config, data_dir, model_dir, devices=None, log=print, progress=None):
    """Trains AlexNet on the converter's TFRecords; resumes from `model_dir` if it holds
    checkpoints. Returns the list of EpochResult of the epochs this run ended.

    `progress(total, description)`, if given, returns a progress bar (tqdm's interface:
    `update`, `set_postfix`, `close`) for each epoch's training and validation."""
    info = check_data_dir(data_dir)
    data_dir, model_dir = pathlib.Path(data_dir), pathlib.Path(model_dir)
    num_classes = info["num_classes"]
    strategy = select_strategy(devices, config.heartbeat_timeout_seconds)
    # Installed after the strategy: MultiWorkerMirroredStrategy's coordination service sets
    # a SIGTERM handler of its own (in C++) as it starts, which would silence this one.
    with SigtermFlag() as sigterm:
        replicas = strategy.num_replicas_in_sync
        if config.global_batch_size % replicas:
            raise UsageError(
                f"--global_batch_size {config.global_batch_size} is not divisible "
                f"by the {replicas} replicas"
            )
        steps_per_epoch = info["num_examples"]["train"] // config.global_batch_size
        if steps_per_epoch < 1:
            raise UsageError(
                f"the training split has {info['num_examples']['train']} images, "
                f"fewer than one global batch of {config.global_batch_size}"
            )
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        chief = is_chief(strategy)
        recorded = _recorded_source(model_dir)
        config, architecture = finetune.run_architecture(
            config, recorded["architecture"] if recorded else None, log
        )
        keep_fc8, why_fresh = (
            finetune.keeps_fc8(
                config.init_from,
                architecture.num_classes,
                input_pipeline.readable_class_names(info),
            )
            if config.init_from and recorded is None
            else (True, None)
        )
        if not keep_fc8 and "fc8" not in config.trained_layers:
            raise UsageError(
                f"fc8 will be a fresh layer for the data's {num_classes} classes, "
                f"{why_fresh}: --train_layers must include fc8"
            )
        RunDir(model_dir).check_resume(config, num_classes)
        # Every worker takes part in saving checkpoints, but only the chief's land in
        # model_dir; the others write to a folder of their own that is removed at the end.
        scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="alexnet-worker-"))
        output_dir = model_dir if chief else scratch
        output_dir.mkdir(parents=True, exist_ok=True)
        log(
            f"strategy: {'MultiWorkerMirroredStrategy' if multi_worker else type(strategy).__name__}"
            f" with {replicas} replica(s), {config.global_batch_size // replicas} images per "
            f"replica per step"
        )
        policy = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
        keras.config.set_dtype_policy(policy[config.mixed_precision])
        try:
            with watch_peers(strategy, config.heartbeat_timeout_seconds):
                return _train(
                    config,
                    architecture,
                    (keep_fc8, why_fresh),
                    info,
                    data_dir,
                    model_dir,
                    output_dir,
                    strategy,
                    chief,
                    multi_worker,
                    steps_per_epoch,
                    sigterm,
                    log,
                    progress,
                )
        except PEER_ERRORS as error:  # a peer lost before the first step
            if not multi_worker:
                raise
            raise peer_lost(error, None, model_dir) from None
        finally:
            keras.config.set_dtype_policy("float32")
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def _train(
    config,
    architecture,
    fc8_plan,
    info,
    data_dir,
    model_dir,
    output_dir,
    strategy,
    chief,
    multi_worker,
    steps_per_epoch,
    sigterm,
    log,
    progress,
):
    num_classes = info["num_classes"]
    # Once checkpoints exist they win over --init_from: the source is not read again.
    source, source_record = None, None
    if (
        config.init_from
        and tf.train.latest_checkpoint(str(RunDir(model_dir).checkpoints_dir)) is None
    ):
        source = finetune.load_source(config.init_from)
        source_record = {
            "path": str(config.init_from),
            "weights_fingerprint": weights_fingerprint(source),
            "architecture": dataclasses.asdict(architecture),
        }
    with strategy.scope():
        model = build_model(config, num_classes, lrn=architecture.lrn)
        if source is not None:
            keep_fc8, why_fresh = fc8_plan
            finetune.copy_weights(source, model, keep_fc8, log)
            log(
                f"fc8: kept (the source's {num_classes} classes)"
                if keep_fc8
                else f"fc8: a fresh layer for the data's {num_classes} classes, {why_fresh}"
            )
            source_record["fc8"] = "kept" if keep_fc8 else "fresh"
            del source
        else:
            mean_layer(model).set_mean(info["rgb_mean"])
        finetune.freeze(model, config.trained_layers)
        optimizer = build_optimizer(config, model)
        state = LoopState(config)
    step, epochs_ended = state.step, state.epochs_ended
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.checkpoint_items())
    # Every worker restores the chief's checkpoint (model_dir is shared storage).
    restored = _restore_latest(checkpoint, RunDir(model_dir).checkpoints_dir)
    start_step = int(step.numpy())
    if multi_worker:
        _check_workers_agree(strategy, start_step, model_dir)
    if chief:
        # Readable names when the converter was given them: exports label their outputs so.
        RunDir(model_dir).record_run(
            config,
            input_pipeline.readable_class_names(info),
            data_dir,
            strategy.num_replicas_in_sync,
            start_step if restored else None,
            source=source_record,
        )
    if restored:
        log(
            f"resumed from {restored} at step {start_step} "
            f"(epoch {int(epochs_ended.numpy()) + 1})"
            + (", not from --init_from" if config.init_from else "")
        )
    if config.train_layers != "all":
        log(f"training {config.train_layers}; the other layers stay as loaded")
    manager = tf.train.CheckpointManager(
        checkpoint, str(RunDir(output_dir).checkpoints_dir), max_to_keep=config.keep_checkpoints
    )

    pca = (
        input_pipeline.PCALighting.from_dataset_info(info, config.pca_noise_std)
        if config.pca_noise_std > 0
        else None
    )
    train_pattern = DataDir(data_dir).shard_pattern("train")

    def train_dataset(context):
        # A resumed run reshuffles with a new seed instead of replaying the first batches.
        return input_pipeline.make_dataset(
            train_pattern,
            config.global_batch_size,
            training=True,
            input_context=context,
            pca=pca,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed + start_step,
            deterministic=config.deterministic,
        )

    val_count = info["num_examples"]["validation"]

    def val_dataset(context):
        # Repeated, and read val_batches at a time: each epoch's pass is the same full batches
        # (padded) from one iterator, made once, where a new iterator per epoch made
        # TensorFlow's input code log a warning every few epochs.
        return input_pipeline.make_dataset(
            DataDir(data_dir).shard_pattern("validation"),
            config.global_batch_size,
            training=False,
            input_context=context,
            num_examples=val_count,
        ).repeat()

    with native_stderr_without(DISTRIBUTED_ITERATOR_NOTE):
        data = _Data(
            train_iterator=iter(strategy.distribute_datasets_from_function(train_dataset)),
            train_pattern=train_pattern,
            validation=iter(strategy.distribute_datasets_from_function(val_dataset)),
            val_batches=math.ceil(val_count / config.global_batch_size),
        )
    train_step, eval_step = make_step_functions(strategy, model, optimizer, config)
    loop = TrainingLoop(
        config=config,
        model=model,
        optimizer=optimizer,
        train_step=train_step,
        eval_step=eval_step,
        manager=manager,
        state=state,
        steps_per_epoch=steps_per_epoch,
        multi_worker=multi_worker,
        sigterm=sigterm,
        progress=progress,
        log=log,
    )
    outputs = _Outputs(
        model_dir=model_dir,
        chief=chief,
        summary_writer=tf.summary.create_file_writer(str(RunDir(output_dir).logs_dir)),
    )
    try:
        results = _run_epochs(loop, data, outputs)
    except PEER_ERRORS as error:  # a collective of a step could not reach a peer
        if not multi_worker:
            raise
        raise peer_lost(error, int(step.numpy()), model_dir) from None
    if chief:
        _save_model(model, RunDir(model_dir).model_file())
        figures.log_conv1_kernels(model, outputs.summary_writer, int(step.numpy()))
    log(f"finished at step {int(step.numpy())}; weights fingerprint {weights_fingerprint(model)}")
    return results


def _describe_data_error(error, train_pattern):
    """tf.data's error does not say which file is bad: find it. Only called for errors
    raised while reading the next batch, never for the step's own errors."""
    culprit = input_pipeline.find_corrupt_record(train_pattern)
    detail = culprit or error.message.splitlines()[0]
    return UsageError(
        f"unreadable training data: {detail}. Convert the images again with data/build_tfrecords.py"
    )
