"""One frozen config object, with the paper's recipe and a demo preset that trains on a CPU.

    python train.py --config paper --data_dir D --model_dir M    # the paper (section 5)
    python train.py                                              # the demo on synthetic data

Every run prints its resolved config and writes it to `model_dir/config.json`. Standard
library only, like the rest of `alexnet_keras_base`: the commands build their flags from it
before they import TensorFlow.
"""

import dataclasses
import json

from alexnet_keras_base.errors import UsageError

# Where train.py builds the embedded synthetic dataset and writes the demo run; evaluate.py
# reads them by default.
DEMO_DATASET_DIR = "datasets/synthetic"
DEMO_RECORDS_DIR = "datasets/synthetic/records"
DEMO_MODEL_DIR = "runs/demo"

# The heartbeat timeout of the coordination service that MultiWorkerMirroredStrategy starts
# on the chief; 10 s is TensorFlow's own default. Each worker sends a heartbeat every half of
# it and counts the service lost when one goes unanswered for that half; the service counts
# a worker lost when none came for the whole timeout (distribute.py, troubleshooting.md).
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 10.0
MIN_HEARTBEAT_TIMEOUT_SECONDS = 1.0
# How long each worker waits for the others as the cluster forms (the chief until each
# listens, the others to register with its coordination service) before it ends with the
# retryable status: long enough for a job controller to schedule every worker and pull its
# image; TensorFlow's own waits last an hour (distribute.py).
DEFAULT_CLUSTER_START_TIMEOUT_SECONDS = 900.0
# A week: both timeouts reach TensorFlow as whole milliseconds, which inf and nan are not.
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0

LR_SCHEDULES = ("plateau", "step", "cosine")
MIXED_PRECISION = ("off", "float16", "bfloat16")
KERNEL_INITIALIZERS = ("paper", "he_normal")  # a run's choices (model.py adds "zeros")
# The layers of build_alexnet that hold weights, in the network's order: what --train_layers
# chooses among when fine-tuning.
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
ALL_LAYERS = "all"

# The largest images the converter and the serving signature accept, in pixels. Pillow's own
# warning threshold: larger files are refused as decompression bombs before any pixel is
# decoded. Serving refuses larger requests before it decodes them.
CONVERTER_MAX_PIXELS = 89_478_485
SERVING_MAX_PIXELS = 50_000_000
# The paper's top-5: evaluation's top-5 error, the export's answers, predict.py's rows.
TOP_K = 5


def _canonical_train_layers(text):
    """'all', or the chosen WEIGHT_LAYERS comma-separated in the network's order."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise UsageError(
            f"--train_layers is empty: name layers among {', '.join(WEIGHT_LAYERS)}, "
            f"or {ALL_LAYERS}"
        )
    unknown = [name for name in names if name not in (*WEIGHT_LAYERS, ALL_LAYERS)]
    if unknown:
        raise UsageError(
            f"--train_layers: unknown layer {', '.join(map(repr, unknown))}; the "
            f"layers are {', '.join(WEIGHT_LAYERS)}, or {ALL_LAYERS}"
        )
    if ALL_LAYERS in names or set(names) == set(WEIGHT_LAYERS):
        return ALL_LAYERS
    return ",".join(name for name in WEIGHT_LAYERS if name in names)


def _setting(default, help, choices=None, metavar=None):
    """A Config field with the help text of its train.py flag (the flags are built from the
    fields: alexnet_keras_cli/train.py)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar}
    )


@dataclasses.dataclass(frozen=True)
class Config:
    # === Model ===
    width_multiplier: float = _setting(1.0, "channel scale; 1.0 is the paper's network")
    dropout_rate: float | None = _setting(
        0.5, "dropout after fc6 and fc7 (paper: 0.5; with --init_from the model's by default)"
    )
    bias_init: float = _setting(
        1.0, "initial bias of conv2, conv4, conv5, fc6 and fc7 (paper: 1; Caffe: 0.1)"
    )
    kernel_init: str = _setting(
        "paper", "initial weights: 'paper' N(0, 0.01), or 'he_normal'", choices=KERNEL_INITIALIZERS
    )
    input_scale: float = _setting(
        1.0, "factor after the mean subtraction (1: the paper; 1/64 suits he_normal)"
    )

    # === Optimisation (paper section 5) ===
    epochs: int = _setting(90, "number of epochs (paper: 90)")
    global_batch_size: int = _setting(
        128, "images per step over all replicas (paper: 128, whatever the replicas)"
    )
    learning_rate: float = _setting(0.01, "initial learning rate (paper: 0.01)")
    momentum: float = _setting(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _setting(
        5e-4, "L2 weight decay, inside the momentum update (paper: 0.0005)"
    )
    lr_schedule: str = _setting(
        "plateau",
        "'plateau' divides by 10 when validation top-1 stops improving (paper); "
        "'step' every --step_epochs; 'cosine'",
        choices=LR_SCHEDULES,
    )
    plateau_patience: int = _setting(
        5, "'plateau': epochs without a better validation top-1 error before a reduction"
    )
    plateau_factor: float = _setting(0.1, "'plateau': the factor of each reduction")
    max_lr_reductions: int = _setting(3, "'plateau': reductions at most (paper: 3)")
    step_epochs: int = _setting(30, "'step': epochs between divisions by 10")
    warmup_epochs: float = _setting(0.0, "linear warmup from 0, in epochs, any schedule")

    # === Input ===
    shuffle_buffer: int = _setting(10_000, "examples in the shuffle buffer")
    pca_noise_std: float = _setting(
        0.1, "std of the PCA lighting noise's alpha_i (paper: 0.1; 0 turns it off)"
    )

    # === Fine-tuning ===
    init_from: str | None = _setting(
        None,
        "start from the weights of a .keras model of this project (a run's "
        "alexnet.keras or an imported one); its width, LRN and mean are kept, fc8 is replaced "
        "when the data has other classes",
        metavar="MODEL",
    )
    train_layers: str = _setting(
        ALL_LAYERS,
        "with --init_from: comma-separated layers to train among conv1, conv2, "
        "conv3, conv4, conv5, fc6, fc7, fc8, or 'all' (default); the others stay exactly as "
        "loaded",
        metavar="LAYERS",
    )

    # === Runtime ===
    mixed_precision: str = _setting(
        "off",
        "mixed precision for GPUs: float16 (with loss scaling) or bfloat16",
        choices=MIXED_PRECISION,
    )
    xla: bool = _setting(False, "compile the training step with XLA (GPU users)")
    checkpoint_every_steps: int = _setting(500, "checkpoint interval in steps")
    keep_checkpoints: int = _setting(3, "how many checkpoints to keep")
    seed: int = _setting(0, "random seed")
    deterministic: bool = _setting(False, "reproducible input order and augmentation (slower)")
    heartbeat_timeout_seconds: float = _setting(
        DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
        "multi-worker: seconds without a heartbeat before a worker, or the coordination "
        "service on the chief, counts as lost (TensorFlow's default: 10)",
    )
    cluster_start_timeout_seconds: float = _setting(
        DEFAULT_CLUSTER_START_TIMEOUT_SECONDS,
        "multi-worker: seconds each worker waits for the others as the cluster forms, "
        "before it ends with status 200, which a job controller retries",
    )

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.global_batch_size >= 1,
                f"global_batch_size must be >= 1, got {self.global_batch_size}",
            ),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}",
            ),
            (
                self.mixed_precision in MIXED_PRECISION,
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
            ),
            (
                self.checkpoint_every_steps >= 1,
                f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}",
            ),
            (
                self.keep_checkpoints >= 1,
                f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
            ),
            (
                self.plateau_patience >= 1,
                f"plateau_patience must be >= 1, got {self.plateau_patience}",
            ),
            (
                0 < self.plateau_factor < 1,
                f"plateau_factor must be in (0, 1), got {self.plateau_factor}",
            ),
            (self.step_epochs >= 1, f"step_epochs must be >= 1, got {self.step_epochs}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.pca_noise_std >= 0, f"pca_noise_std must be >= 0, got {self.pca_noise_std}"),
            (self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}"),
            (
                MIN_HEARTBEAT_TIMEOUT_SECONDS
                <= self.heartbeat_timeout_seconds
                <= MAX_TIMEOUT_SECONDS,
                f"heartbeat_timeout_seconds must be >= {MIN_HEARTBEAT_TIMEOUT_SECONDS:g} and <= "
                f"{MAX_TIMEOUT_SECONDS:g}, got {self.heartbeat_timeout_seconds}",
            ),
            (
                1 <= self.cluster_start_timeout_seconds <= MAX_TIMEOUT_SECONDS,
                f"cluster_start_timeout_seconds must be >= 1 and <= {MAX_TIMEOUT_SECONDS:g}, "
                f"got {self.cluster_start_timeout_seconds}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        # Frozen dataclass: the canonical spelling is stored, so that "fc8,fc7" and "fc7,fc8"
        # are the same setting in config.json, run.json and the resume checks.
        object.__setattr__(self, "train_layers", _canonical_train_layers(self.train_layers))
        if self.train_layers != ALL_LAYERS and not self.init_from:
            raise UsageError(
                f"--train_layers {self.train_layers} needs --init_from: without "
                f"it the frozen layers would keep their random initial weights"
            )

    @property
    def trained_layers(self):
        """The names in WEIGHT_LAYERS this run trains."""
        if self.train_layers == ALL_LAYERS:
            return WEIGHT_LAYERS
        return tuple(self.train_layers.split(","))

    def replace(self, **changes):
        """A copy with `changes`; unknown names are an error."""
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


PRESETS = {
    # The paper: batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 on
    # plateaus of the validation error, three times, about 90 epochs.
    "paper": Config(),
    # A quarter-width network on the synthetic dataset: a few minutes on a 2-core CPU.
    # He initialisation on unit-scale inputs, no dropout (1,200 images are too few to need
    # it and it slows the start) and a cosine schedule make the small network learn quickly
    # from scratch; the layers and their order are the paper's. The rate 0.01: with 0.02 the
    # runs of the seeds 0, 1 and 2 ended at a validation top-1 error of 0.42, 0.29 and 0.21
    # (the first fell back to chance for six epochs), with 0.01 at 0.08, 0.14 and 0.18.
    "demo": Config(
        width_multiplier=0.25,
        kernel_init="he_normal",
        input_scale=1 / 64,
        bias_init=0.1,
        dropout_rate=0.0,
        epochs=25,
        global_batch_size=32,
        learning_rate=0.01,
        lr_schedule="cosine",
        warmup_epochs=1.0,
        shuffle_buffer=2_000,
        checkpoint_every_steps=50,
    ),
    # Fine-tuning a saved model (--init_from; the default preset then), measured by
    # bench/finetune_transfer.py (docs/finetuning.md): the rate 0.003 (the best of 0.001,
    # 0.003 and 0.01), the source's own dropout (0.5 where it had none cost 0.08 of accuracy
    # on average), a cosine schedule over 10 epochs. The network, its mean and its initial weights are
    # the source's; kernel_init only draws a fresh fc8, N(0, 0.01) as in Caffe's example.
    "finetune": Config(
        dropout_rate=None,
        epochs=10,
        global_batch_size=32,
        learning_rate=0.003,
        lr_schedule="cosine",
        shuffle_buffer=2_000,
        checkpoint_every_steps=100,
    ),
}


def print_config(config, log=print):
    """Logs every field of `config`, one per line, as each run starts."""
    log("config:")
    for key, value in dataclasses.asdict(config).items():
        log(f"  {key}: {value}")
