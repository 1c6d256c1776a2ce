"""Distributed training: strategy selection, the paper's optimiser and schedules, one custom
training loop for MirroredStrategy and MultiWorkerMirroredStrategy, and checkpoints that
survive preemption.

Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy, so the loop is written out:
`strategy.run`, the loss averaged over the *global* batch with `tf.nn.compute_average_loss`,
the weight decay as an L2 term scaled with `tf.nn.scale_regularization_loss`, and metrics
summed across replicas.
"""

import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.files import replaced_atomically, write_text_atomically
from alexnet_keras.model import build_alexnet, mean_layer

CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "alexnet.keras"
BEST_MODEL = "alexnet_best.keras"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: a job controller should run the command again
# Trained AlexNet weights are of order 0.01 to 1. A weight beyond this bound has blown up even
# while the loss still looks finite (a huge update can silence every ReLU and leave a constant
# loss), so a checkpoint holding one is not a "good" checkpoint to resume from.
MAX_ABS_WEIGHT = 1e4


class UsageError(ValueError):
    """A problem the user can fix: bad flags, a bad data or model folder."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved."""


@dataclasses.dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_top1_error: float
    train_top5_error: float
    val_loss: float
    val_top1_error: float
    val_top5_error: float
    learning_rate: float
    images_per_second: float
    seconds: float


# === Strategy ===


def cluster_spec_from_environment():
    """The TF_CONFIG cluster, or None when there is none (or a single task)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except ValueError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = tf_config.get("cluster", {})
    tasks = sum(len(addresses) for addresses in cluster.values())
    return tf_config if tasks > 1 else None


def select_strategy(devices=None):
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster; otherwise
    MirroredStrategy over `devices` (default: all GPUs, or the CPU when there is none)."""
    if cluster_spec_from_environment() is not None:
        if devices:
            raise UsageError("--devices cannot be combined with a multi-worker TF_CONFIG")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        available = {_canonical_device(device.name) for device in tf.config.list_logical_devices()}
        for device in devices:
            if _canonical_device(device) not in available:
                raise UsageError(
                    f"unknown device {device!r}; this machine has: {', '.join(sorted(available))}")
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=["/cpu:0"])


def _canonical_device(name):
    """'/job:localhost/replica:0/task:0/device:GPU:0' and 'gpu:0' -> '/gpu:0'."""
    name = name.lower().replace("/job:localhost/replica:0/task:0", "").replace("device:", "")
    return name if name.startswith("/") else "/" + name


def is_chief(strategy):
    """True on the one worker that writes final artifacts."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


# === Data folder ===


def check_data_dir(data_dir):
    """Validates the converter's output folder; returns dataset.json's contents."""
    if not data_dir:
        raise UsageError("--data_dir is required (or omit it to train the demo)")
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"--data_dir {data_dir} does not exist")
    if not any(data_dir.iterdir()):
        raise UsageError(f"--data_dir {data_dir} is empty: convert images into it with "
                         f"data/build_tfrecords.py")
    missing = [name for name in ("labels.txt", "dataset.json") if not (data_dir / name).exists()]
    if missing:
        raise UsageError(f"--data_dir {data_dir} has no {' or '.join(missing)}: is it the "
                         f"output folder of data/build_tfrecords.py?")
    for split in ("train", "validation"):
        if not list(data_dir.glob(f"{split}-*.tfrecord")):
            raise UsageError(f"--data_dir {data_dir} has no {split}-*.tfrecord files")
    info = json.loads((data_dir / "dataset.json").read_text())
    labels = (data_dir / "labels.txt").read_text().split("\n")
    if len([label for label in labels if label]) != info["num_classes"]:
        raise UsageError(f"{data_dir}/labels.txt and dataset.json disagree on the classes")
    return info


# === Learning rate ===


def learning_rate_at(config, step, steps_per_epoch, plateau_rate):
    """The learning rate of `step` (0-based). `plateau_rate` is the current rate of the
    plateau schedule, which only epoch ends change."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "plateau":
        rate = plateau_rate
    elif config.lr_schedule == "step":
        rate = config.learning_rate * 0.1 ** (step // steps_per_epoch // config.step_epochs)
    else:
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        rate = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    if warmup_steps and step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


class PlateauState:
    """ReduceLROnPlateau on the validation top-1 error, kept in checkpointed variables."""

    def __init__(self, config):
        self.config = config
        self.rate = tf.Variable(config.learning_rate, dtype=tf.float64, trainable=False)
        self.best_error = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)

    def checkpoint_items(self):
        return dict(plateau_rate=self.rate, best_error=self.best_error,
                    bad_epochs=self.bad_epochs, reductions=self.reductions)

    def is_improvement(self, val_top1_error):
        return val_top1_error < float(self.best_error.numpy()) - 1e-6

    def update(self, val_top1_error):
        """Called at each epoch end; returns True when the rate was reduced."""
        if self.is_improvement(val_top1_error):
            self.best_error.assign(val_top1_error)
            self.bad_epochs.assign(0)
            return False
        self.bad_epochs.assign_add(1)
        if (self.config.lr_schedule == "plateau"
                and int(self.bad_epochs.numpy()) >= self.config.plateau_patience
                and int(self.reductions.numpy()) < self.config.max_lr_reductions):
            self.rate.assign(float(self.rate.numpy()) * self.config.plateau_factor)
            self.reductions.assign_add(1)
            self.bad_epochs.assign(0)
            return True
        return False


# === Steps ===


def _regularized_kernels(model):
    # Weight decay on the kernels only, as Caffe's reference model (decay_mult 0 on the
    # biases): decaying the biases would pull the paper's 1.0 initial biases back to 0.
    return [weight for weight in model.trainable_weights if weight.path.endswith("kernel")]


def make_step_functions(strategy, model, optimizer, config):
    """tf.functions: train_step(iterator) and eval_step(iterator), each returning metric sums
    over the global batch: loss, top-1 correct, top-5 correct, example count."""
    kernels = _regularized_kernels(model)
    top_k = min(5, model.output.shape[-1])
    float16 = config.mixed_precision == "float16"

    def metric_sums(labels, logits, per_example_loss):
        valid = tf.cast(labels != input_pipeline.PADDING_LABEL, tf.float32)
        safe_labels = tf.maximum(labels, 0)
        top1 = tf.cast(tf.math.in_top_k(safe_labels, logits, 1), tf.float32) * valid
        top5 = tf.cast(tf.math.in_top_k(safe_labels, logits, top_k), tf.float32) * valid
        return tf.stack([tf.reduce_sum(per_example_loss * valid), tf.reduce_sum(top1),
                         tf.reduce_sum(top5), tf.reduce_sum(valid)])

    def train_replica(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example_loss = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True)
            loss = tf.nn.compute_average_loss(
                per_example_loss, global_batch_size=config.global_batch_size)
            if config.weight_decay:
                l2 = 0.5 * config.weight_decay * tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(kernel, tf.float32))) for kernel in kernels])
                loss += tf.nn.scale_regularization_loss(l2)
            scaled_loss = optimizer.scale_loss(loss) if float16 else loss
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return metric_sums(labels, logits, per_example_loss)

    def eval_replica(images, labels):
        logits = model(images, training=False)
        per_example_loss = keras.losses.sparse_categorical_crossentropy(
            tf.maximum(labels, 0), logits, from_logits=True)
        return metric_sums(labels, logits, per_example_loss)

    def reduce(per_replica):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    replica_step = tf.function(train_replica, jit_compile=True) if config.xla else train_replica

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        return reduce(strategy.run(replica_step, args=(images, labels)))

    @tf.function
    def eval_step(batch):
        return reduce(strategy.run(eval_replica, args=batch))

    return train_step, eval_step


# === Outputs ===


def _save_model(model, path):
    with replaced_atomically(path) as temporary:
        model.save(temporary)


def _write_history(model_dir, rows):
    fields = [field.name for field in dataclasses.fields(EpochResult)]
    with replaced_atomically(pathlib.Path(model_dir) / "history.csv") as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def _read_history(model_dir, before_epoch):
    path = pathlib.Path(model_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) < before_epoch]


def plot_training_curves(rows, path):
    """training_curves.png: loss and top-1 / top-5 error per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    loss_axis.plot(epochs, [float(r["val_loss"]) for r in rows], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    for key, style in (("top1", "-"), ("top5", "--")):
        error_axis.plot(epochs, [float(r[f"train_{key}_error"]) for r in rows], style, label=f"train {key}")
        error_axis.plot(epochs, [float(r[f"val_{key}_error"]) for r in rows], style, label=f"validation {key}")
    error_axis.set(xlabel="epoch", ylabel="error", title="Top-1 / top-5 error", ylim=(0, 1))
    for axis in (loss_axis, error_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)


def _check_weights_before_saving(model, step, manager, learning_rate):
    """Raises TrainingDiverged, so nothing is saved, when a weight is non-finite or absurd."""
    # `abs(w) <= bound` is False for NaN as well as for infinities and huge values.
    if all(bool(tf.reduce_all(tf.abs(weight.value) <= MAX_ABS_WEIGHT))
           for weight in model.trainable_weights):
        return
    raise TrainingDiverged(
        f"the weights became non-finite or larger than {MAX_ABS_WEIGHT:g} by step {step}; "
        f"stopped without saving, so the last good checkpoint in {manager.directory} is kept. "
        f"Lower --learning_rate (now {learning_rate:g}) or check the data.")


def weights_fingerprint(model):
    """A short hash of all weights, to compare replicas and workers."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


# === The job ===


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def train(config, data_dir, model_dir, devices=None, log=print, progress=None):
    """Trains AlexNet on the converter's TFRecords; resumes from `model_dir` if it holds
    checkpoints. Returns the list of EpochResult of this run."""
    info = check_data_dir(data_dir)
    data_dir, model_dir = pathlib.Path(data_dir), pathlib.Path(model_dir)
    num_classes = info["num_classes"]
    strategy = select_strategy(devices)
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise UsageError(f"--global_batch_size {config.global_batch_size} is not divisible by "
                         f"the {replicas} replicas")
    steps_per_epoch = info["num_examples"]["train"] // config.global_batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"the training split has {info['num_examples']['train']} images, fewer "
                         f"than one global batch of {config.global_batch_size}")
    chief = is_chief(strategy)
    # Non-chief workers must take part in saving checkpoints, but into a folder of their own
    # that is removed at the end.
    scratch = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="alexnet-worker-"))
    output_dir = model_dir if chief else scratch
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_model_dir(model_dir, num_classes, config)

    if chief:
        write_text_atomically(model_dir / "config.json", config.to_json())
        write_text_atomically(model_dir / "run.json", json.dumps(
            {"num_classes": num_classes, "data_dir": str(data_dir), "replicas": replicas,
             "width_multiplier": config.width_multiplier}, indent=2))
    strategy_name = ("MultiWorkerMirroredStrategy"
                     if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                     else type(strategy).__name__)
    log(f"strategy: {strategy_name} with {replicas} replica(s), "
        f"{config.global_batch_size // replicas} images per replica per step")

    policy = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    keras.config.set_dtype_policy(policy[config.mixed_precision])
    keras.utils.set_random_seed(config.seed)
    try:
        with strategy.scope():
            model = build_alexnet(num_classes=num_classes, dropout_rate=config.dropout_rate,
                                  width_multiplier=config.width_multiplier,
                                  bias_init=config.bias_init, kernel_init=config.kernel_init,
                                  input_scale=config.input_scale)
            mean_layer(model).set_mean(info["rgb_mean"])
            optimizer = keras.optimizers.SGD(learning_rate=config.learning_rate,
                                             momentum=config.momentum)
            if config.mixed_precision == "float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
            plateau = PlateauState(config)
            step = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                         **plateau.checkpoint_items())
        manager = tf.train.CheckpointManager(checkpoint, str(output_dir / CHECKPOINT_DIR),
                                             max_to_keep=config.keep_checkpoints)
        restored = manager.restore_or_initialize()
        start_step = int(step.numpy())
        if restored and start_step:
            log(f"resumed from {restored} at step {start_step} "
                f"(epoch {start_step // steps_per_epoch + 1})")

        pca = (input_pipeline.PCALighting.from_dataset_info(info, config.pca_noise_std)
               if config.pca_noise_std > 0 else None)

        train_pattern = str(data_dir / "train-*.tfrecord")

        def train_dataset(context):
            # A resumed run reshuffles with a new seed instead of replaying the first batches.
            return input_pipeline.make_dataset(
                train_pattern, config.global_batch_size, training=True,
                input_context=context, pca=pca, shuffle_buffer=config.shuffle_buffer,
                seed=config.seed + start_step, deterministic=config.deterministic)

        val_count = info["num_examples"]["validation"]

        def val_dataset(context):
            return input_pipeline.make_dataset(
                str(data_dir / "validation-*.tfrecord"), config.global_batch_size,
                training=False, input_context=context, num_examples=val_count)

        train_iterator = iter(strategy.distribute_datasets_from_function(train_dataset))
        validation = strategy.distribute_datasets_from_function(val_dataset)
        train_step, eval_step = make_step_functions(strategy, model, optimizer, config)

        summary_writer = tf.summary.create_file_writer(str(output_dir / "logs"))
        history = _read_history(model_dir, start_step // steps_per_epoch) if chief else []
        results = []
        total_steps = config.epochs * steps_per_epoch
        with _SigtermFlag() as sigterm:
            while int(step.numpy()) < total_steps:
                result = _run_epoch(
                    config, train_pattern, model, step, steps_per_epoch, plateau, optimizer,
                    train_step, eval_step, train_iterator, validation, manager, sigterm,
                    progress, log)
                results.append(result)
                history.append(dataclasses.asdict(result))
                improved = plateau.is_improvement(result.val_top1_error)
                reduced = plateau.update(result.val_top1_error)
                _check_weights_before_saving(model, int(step.numpy()), manager,
                                             result.learning_rate)
                manager.save(checkpoint_number=int(step.numpy()))
                if reduced:
                    log(f"validation top-1 error has not improved for "
                        f"{config.plateau_patience} epochs: learning rate divided by "
                        f"{1 / config.plateau_factor:g}")
                remaining = (total_steps - int(step.numpy())) / steps_per_epoch
                _log_epoch(log, result, config.epochs, eta_seconds=remaining * result.seconds)
                with summary_writer.as_default(step=int(step.numpy())):
                    for name, value in dataclasses.asdict(result).items():
                        if name not in ("epoch", "seconds"):
                            tf.summary.scalar(name, value)
                if chief:
                    _write_history(model_dir, history)
                    plot_training_curves(history, model_dir / "training_curves.png")
                    if improved:
                        _save_model(model, model_dir / BEST_MODEL)
        if chief:
            _save_model(model, model_dir / FINAL_MODEL)
        log(f"finished at step {int(step.numpy())}; weights fingerprint "
            f"{weights_fingerprint(model)}")
        return results
    finally:
        keras.config.set_dtype_policy("float32")
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _check_model_dir(model_dir, num_classes, config):
    run_file = model_dir / "run.json"
    if not run_file.exists() or not (model_dir / CHECKPOINT_DIR).exists():
        return
    previous = json.loads(run_file.read_text())
    if previous.get("num_classes") != num_classes:
        raise UsageError(
            f"--model_dir {model_dir} holds a checkpoint for {previous.get('num_classes')} "
            f"classes but the data has {num_classes}: use another --model_dir")
    if previous.get("width_multiplier", config.width_multiplier) != config.width_multiplier:
        raise UsageError(
            f"--model_dir {model_dir} holds a checkpoint of width {previous['width_multiplier']} "
            f"but the config asks for {config.width_multiplier}: use another --model_dir")


def _run_epoch(config, train_pattern, model, step, steps_per_epoch, plateau, optimizer, train_step,
               eval_step, train_iterator, validation, manager, sigterm, progress, log):
    # The step and the plateau rate are read from their variables once per epoch: reading a
    # variable each step would be a device-to-host copy on GPUs.
    current = int(step.numpy())
    plateau_rate = float(plateau.rate.numpy())
    epoch = current // steps_per_epoch
    epoch_end = (epoch + 1) * steps_per_epoch
    sums = np.zeros(4)
    start = time.perf_counter()
    bar = progress(epoch_end - current, epoch) if progress else None
    try:
        while current < epoch_end:
            rate = learning_rate_at(config, current, steps_per_epoch, plateau_rate)
            optimizer.learning_rate = rate
            try:
                step_sums = train_step(train_iterator).numpy()
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
                raise _describe_data_error(error, train_pattern) from None
            if not np.isfinite(step_sums[0]):
                raise TrainingDiverged(
                    f"the loss became {step_sums[0]} at step {current + 1}; stopped without "
                    f"saving, so the last good checkpoint in {manager.directory} is kept. Lower "
                    f"--learning_rate (now {rate:g}) or check the data.")
            current += 1
            step.assign(current)
            sums += step_sums
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0] / sums[3]:.3f}",
                                top1=f"{sums[1] / sums[3]:.3f}", lr=f"{rate:.2g}")
            if current % config.checkpoint_every_steps == 0 or sigterm.raised:
                _check_weights_before_saving(model, current, manager, rate)
                manager.save(checkpoint_number=current)
            if sigterm.raised:
                raise Preempted(f"SIGTERM: saved a checkpoint at step {current} in "
                                f"{manager.directory}; run the same command to resume")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    val_sums = np.zeros(4)
    for batch in validation:
        val_sums += eval_step(batch).numpy()
    return EpochResult(
        epoch=epoch,
        train_loss=sums[0] / sums[3],
        train_top1_error=1 - sums[1] / sums[3],
        train_top5_error=1 - sums[2] / sums[3],
        val_loss=val_sums[0] / val_sums[3],
        val_top1_error=1 - val_sums[1] / val_sums[3],
        val_top5_error=1 - val_sums[2] / val_sums[3],
        learning_rate=float(rate),
        images_per_second=sums[3] / seconds,
        seconds=seconds,
    )


def _describe_data_error(error, train_pattern):
    """tf.data's error does not say which file is bad: find it."""
    culprit = input_pipeline.find_corrupt_record(train_pattern)
    detail = culprit or error.message.splitlines()[0]
    return UsageError(f"unreadable training data: {detail}. Convert the images again with "
                      f"data/build_tfrecords.py")


def _log_epoch(log, result, epochs, eta_seconds):
    log(f"epoch {result.epoch + 1}/{epochs}: loss {result.train_loss:.4f}, "
        f"top-1 error {result.train_top1_error:.4f}, top-5 error {result.train_top5_error:.4f} | "
        f"validation loss {result.val_loss:.4f}, top-1 error {result.val_top1_error:.4f}, "
        f"top-5 error {result.val_top5_error:.4f} | lr {result.learning_rate:.3g}, "
        f"{result.images_per_second:.1f} images/s, {result.seconds:.1f} s, "
        f"ETA {eta_seconds / 60:.1f} min")


def print_config(config, log=print):
    log("config:")
    for key, value in dataclasses.asdict(config).items():
        log(f"  {key}: {value}")

