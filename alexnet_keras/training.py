"""The training job: a run settled before its first step (`_Run`), its network, checkpoints and
record, under MirroredStrategy or MultiWorkerMirroredStrategy, surviving preemption. The loop
that trains, validates and ends each epoch is `training_loop.py`; the strategy and cluster are
in `distribute.py`, the learning-rate schedules and the validation tracker in `schedules.py`,
the step functions and their metric sums in `steps.py` (the weight decay is applied inside the
optimizer's update, `PaperSGD`).

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

import keras
import tensorflow as tf

from alexnet_keras import finetune, input_pipeline, kernel_figure
from alexnet_keras.distribute import (
    PEER_ERRORS,
    is_chief,
    peer_lost,
    select_strategy,
    watch_peers,
)
from alexnet_keras.layers import LRN_PAPER
from alexnet_keras.model import build_alexnet, mean_layer
from alexnet_keras.signals import SigtermFlag
from alexnet_keras.steps import build_optimizer, make_step_functions, weights_fingerprint
from alexnet_keras.summaries import SummaryLog
from alexnet_keras.training_loop import (
    EpochData,
    LoopState,
    Outputs,
    TrainingLoop,
    run_epochs,
    save_model,
)
from alexnet_keras_base.disk_full import rerun_keeps
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import TRAIN, VALIDATION, DataDir, RunDir
from alexnet_keras_base.quiet import (
    DISTRIBUTED_ITERATOR_NOTE,
    native_stderr_without,
)

# === Data folder ===


def check_data_dir(data_dir):
    """Validates the converter's output folder; returns dataset.json's contents."""
    if not data_dir:
        raise UsageError("--data_dir is required (or omit it to train the demo)")
    return DataDir(data_dir).checked()


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


def _recorded_source(run_dir):
    """run.json's `init_from` record when the run folder holds checkpoints to resume, else
    None."""
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


def _kept_checkpoint(run_dir, chief=True):
    """What a rerun after a full disk resumes from. A worker other than the chief writes
    its part of each checkpoint to a scratch folder of its own, and cannot tell whether the
    chief's copy of the one it failed on is whole yet."""
    if not chief:
        return (
            f"the run's checkpoints are the chief's, in {run_dir.checkpoints_dir}: free space "
            f"here and rerun every worker, which resume from the latest whole one there"
        )
    latest = tf.train.latest_checkpoint(str(run_dir.checkpoints_dir))
    if latest is None:
        return "no checkpoint was written yet: free space and run the same command again"
    return f"the last checkpoint, {latest}, is kept: free space and run the same command to resume"


# === The job ===


@dataclasses.dataclass(frozen=True)
class _Run:
    """What a run is, settled before its first step: its settings and data, its folders,
    the strategy and this worker's part in it, and how it reports."""

    config: object  # the Config, with the architecture a resume or --init_from imposes
    architecture: object  # finetune's Architecture of the network
    fc8_plan: tuple  # (keep fc8, why it is fresh), for --init_from
    info: dict  # the records' dataset.json
    records: DataDir
    run_dir: RunDir  # --model_dir
    output_dir: RunDir  # where this worker writes: run_dir, or a scratch folder of its own
    strategy: object
    chief: bool
    multi_worker: bool
    steps_per_epoch: int
    sigterm: SigtermFlag
    log: object
    progress: object


def train(config, data_dir, model_dir, devices=None, log=print, progress=None):
    """Trains AlexNet on the converter's TFRecords; resumes from `model_dir` if it holds
    checkpoints. Returns the list of EpochResult of the epochs this run ended.

    `progress(total, description)`, if given, returns a progress bar (tqdm's interface:
    `update`, `set_postfix`, `close`) for each epoch's training and validation."""
    info = check_data_dir(data_dir)
    model_dir = pathlib.Path(model_dir)
    run_dir = RunDir(model_dir)
    strategy = select_strategy(
        devices,
        config.heartbeat_timeout_seconds,
        config.cluster_start_timeout_seconds,
        model_dir,
    )
    # Installed after the strategy: MultiWorkerMirroredStrategy's coordination service sets
    # a SIGTERM handler of its own (in C++) as it starts, which would silence this one.
    with SigtermFlag() as sigterm:
        steps_per_epoch = _steps_per_epoch(config, info, strategy.num_replicas_in_sync)
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        chief = is_chief(strategy)
        recorded = _recorded_source(run_dir)
        config, architecture = finetune.run_architecture(
            config, recorded["architecture"] if recorded else None, log
        )
        fc8_plan = _fc8_plan(config, architecture, info, resumed=recorded is not None)
        run_dir.check_resume(config, info["num_classes"])
        # Every worker takes part in saving checkpoints, but only the chief's land in
        # model_dir; the others write to a folder of their own that is removed at the end.
        scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="alexnet-worker-"))
        output_dir = model_dir if chief else scratch
        output_dir.mkdir(parents=True, exist_ok=True)
        replicas = strategy.num_replicas_in_sync
        log(
            f"strategy: {'MultiWorkerMirroredStrategy' if multi_worker else type(strategy).__name__}"
            f" with {replicas} replica(s), {config.global_batch_size // replicas} images per "
            f"replica per step"
        )
        run = _Run(
            config=config,
            architecture=architecture,
            fc8_plan=fc8_plan,
            info=info,
            records=DataDir(data_dir),
            run_dir=run_dir,
            output_dir=RunDir(output_dir),
            strategy=strategy,
            chief=chief,
            multi_worker=multi_worker,
            steps_per_epoch=steps_per_epoch,
            sigterm=sigterm,
            log=log,
            progress=progress,
        )
        policy = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
        keras.config.set_dtype_policy(policy[config.mixed_precision])
        try:
            with (
                rerun_keeps(lambda: _kept_checkpoint(run_dir, chief)),
                watch_peers(strategy, config.heartbeat_timeout_seconds),
            ):
                return _train(run)
        except PEER_ERRORS as error:  # a peer lost before the first step
            if not multi_worker:
                raise
            raise peer_lost(error, None, model_dir) from None
        finally:
            keras.config.set_dtype_policy("float32")
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def _steps_per_epoch(config, info, replicas):
    if config.global_batch_size % replicas:
        raise UsageError(
            f"--global_batch_size {config.global_batch_size} is not divisible "
            f"by the {replicas} replicas"
        )
    steps_per_epoch = info["num_examples"][TRAIN] // config.global_batch_size
    if steps_per_epoch < 1:
        raise UsageError(
            f"the training split has {info['num_examples'][TRAIN]} images, "
            f"fewer than one global batch of {config.global_batch_size}"
        )
    return steps_per_epoch


def _fc8_plan(config, architecture, info, resumed):
    """(keep fc8, why it is fresh) for a run that starts from --init_from."""
    if not config.init_from or resumed:
        return True, None
    keep_fc8, why_fresh = finetune.keeps_fc8(
        config.init_from, architecture.num_classes, input_pipeline.readable_class_names(info)
    )
    if not keep_fc8 and "fc8" not in config.trained_layers:
        raise UsageError(
            f"fc8 will be a fresh layer for the data's {info['num_classes']} classes, "
            f"{why_fresh}: --train_layers must include fc8"
        )
    return keep_fc8, why_fresh


def _train(run):
    model, optimizer, state, source_record = _build(run)
    step = state.step
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.checkpoint_items())
    start_step = _restore_and_record(run, checkpoint, state, source_record)
    manager = tf.train.CheckpointManager(
        checkpoint, str(run.output_dir.checkpoints_dir), max_to_keep=run.config.keep_checkpoints
    )
    train_step, eval_step = make_step_functions(run.strategy, model, optimizer, run.config)
    loop = TrainingLoop(
        config=run.config,
        model=model,
        optimizer=optimizer,
        train_step=train_step,
        eval_step=eval_step,
        manager=manager,
        state=state,
        steps_per_epoch=run.steps_per_epoch,
        multi_worker=run.multi_worker,
        sigterm=run.sigterm,
        progress=run.progress,
        log=run.log,
    )
    outputs = Outputs(
        model_dir=run.run_dir.path,
        chief=run.chief,
        summaries=SummaryLog(run.output_dir.logs_dir),
    )
    try:
        results = run_epochs(loop, _input(run, start_step), outputs)
    except PEER_ERRORS as error:  # a collective of a step could not reach a peer
        if not run.multi_worker:
            raise
        raise peer_lost(error, int(step.numpy()), run.run_dir.path) from None
    if run.chief:
        save_model(model, run.run_dir.model_file())
        with outputs.summaries.writing([kernel_figure.KERNELS_TAG]) as writer:
            kernel_figure.log_conv1_kernels(model, writer, int(step.numpy()))
    run.log(
        f"finished at step {int(step.numpy())}; weights fingerprint {weights_fingerprint(model)}"
    )
    return results


def _build(run):
    """The run's network (the source's weights copied in for --init_from, the data's mean
    otherwise), optimizer and loop state, in the strategy's scope; -> (model, optimizer,
    state, the source's record for run.json or None)."""
    config, num_classes, log = run.config, run.info["num_classes"], run.log
    # Once checkpoints exist they win over --init_from: the source is not read again.
    source, source_record = None, None
    if config.init_from and tf.train.latest_checkpoint(str(run.run_dir.checkpoints_dir)) is None:
        source = finetune.load_source(config.init_from)
        source_record = {
            "path": str(config.init_from),
            "weights_fingerprint": weights_fingerprint(source),
            "architecture": dataclasses.asdict(run.architecture),
        }
    with run.strategy.scope():
        model = build_model(config, num_classes, lrn=run.architecture.lrn)
        if source is not None:
            keep_fc8, why_fresh = run.fc8_plan
            finetune.copy_weights(source, model, keep_fc8, log)
            log(
                f"fc8: kept (the source's {num_classes} classes)"
                if keep_fc8
                else f"fc8: a fresh layer for the data's {num_classes} classes, {why_fresh}"
            )
            source_record["fc8"] = "kept" if keep_fc8 else "fresh"
            del source
        else:
            mean_layer(model).set_mean(run.info["rgb_mean"])
        finetune.freeze(model, config.trained_layers)
        optimizer = build_optimizer(config, model)
        state = LoopState(config)
    return model, optimizer, state, source_record


def _restore_and_record(run, checkpoint, state, source_record):
    """Restores the latest checkpoint (every worker: the chief's, in the shared --model_dir)
    and writes the run's record (the chief); -> the step the run starts from."""
    restored = _restore_latest(checkpoint, run.run_dir.checkpoints_dir)
    start_step = int(state.step.numpy())
    if run.multi_worker:
        _check_workers_agree(run.strategy, start_step, run.run_dir.path)
    if run.chief:
        # Readable names when the converter was given them: exports label their outputs so.
        run.run_dir.record_run(
            run.config,
            input_pipeline.readable_class_names(run.info),
            run.records.path,
            run.strategy.num_replicas_in_sync,
            start_step if restored else None,
            source=source_record,
        )
    if restored:
        run.log(
            f"resumed from {restored} at step {start_step} "
            f"(epoch {int(state.epochs_ended.numpy()) + 1})"
            + (", not from --init_from" if run.config.init_from else "")
        )
    if run.config.train_layers != "all":
        run.log(f"training {run.config.train_layers}; the other layers stay as loaded")
    return start_step


def _input(run, start_step):
    """The distributed training and validation iterators of the run."""
    config, info = run.config, run.info
    pca = (
        input_pipeline.PCALighting.from_dataset_info(info, config.pca_noise_std)
        if config.pca_noise_std > 0
        else None
    )
    train_pattern = run.records.shard_pattern(TRAIN)
    val_count = info["num_examples"][VALIDATION]

    def train_dataset(context):
        # A resumed run reshuffles with a new seed instead of replaying the first batches.
        return input_pipeline.make_train_dataset(
            train_pattern,
            config.global_batch_size,
            input_context=context,
            pca=pca,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed + start_step,
            deterministic=config.deterministic,
        )

    def val_dataset(context):
        # Repeated, and read val_batches at a time: each epoch's pass is the same full batches
        # (padded) from one iterator, made once, where a new iterator per epoch made
        # TensorFlow's input code log a warning every few epochs.
        return input_pipeline.make_eval_dataset(
            run.records.shard_pattern(VALIDATION),
            config.global_batch_size,
            input_context=context,
            num_examples=val_count,
        ).repeat()

    with native_stderr_without(DISTRIBUTED_ITERATOR_NOTE):
        return EpochData(
            train_iterator=iter(run.strategy.distribute_datasets_from_function(train_dataset)),
            train_pattern=train_pattern,
            validation=iter(run.strategy.distribute_datasets_from_function(val_dataset)),
            val_batches=math.ceil(val_count / config.global_batch_size),
        )
