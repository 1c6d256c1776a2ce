"""One frozen config object, with the paper's recipe and a demo preset that trains on a CPU.

    python train.py --config paper --data_dir D --model_dir M    # the paper (section 5)
    python train.py                                              # the demo on synthetic data

Every run prints its resolved config and writes it to `model_dir/config.json`. Standard
library only, like the rest of `alexnet_keras_cli`: the commands build their flags from it
before they import TensorFlow.
"""

import dataclasses
import json

# Where train.py builds the embedded synthetic dataset and writes the demo run; evaluate.py
# reads them by default.
DEMO_DATASET_DIR = "datasets/synthetic"
DEMO_RECORDS_DIR = "datasets/synthetic/records"
DEMO_MODEL_DIR = "runs/demo"

LR_SCHEDULES = ("plateau", "step", "cosine")
MIXED_PRECISION = ("off", "float16", "bfloat16")
# The layers of build_alexnet that hold weights, in the network's order: what --train_layers
# chooses among when fine-tuning.
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
ALL_LAYERS = "all"

# The largest images the converter and the serving signature accept, in pixels. Pillow's own
# warning threshold: larger files are refused as decompression bombs before any pixel is
# decoded. Serving refuses larger requests before it decodes them.
CONVERTER_MAX_PIXELS = 89_478_485
SERVING_MAX_PIXELS = 50_000_000


class UsageError(ValueError):
    """A problem the user can fix (bad flags, a bad data or model folder), raised on purpose
    with a message that says what to do; the scripts print it without a traceback."""


def _canonical_train_layers(text):
    """'all', or the chosen WEIGHT_LAYERS comma-separated in the network's order."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise UsageError(f"--train_layers is empty: name layers among {', '.join(WEIGHT_LAYERS)}, "
                         f"or {ALL_LAYERS}")
    unknown = [name for name in names if name not in (*WEIGHT_LAYERS, ALL_LAYERS)]
    if unknown:
        raise UsageError(f"--train_layers: unknown layer {', '.join(map(repr, unknown))}; the "
                         f"layers are {', '.join(WEIGHT_LAYERS)}, or {ALL_LAYERS}")
    if ALL_LAYERS in names or set(names) == set(WEIGHT_LAYERS):
        return ALL_LAYERS
    return ",".join(name for name in WEIGHT_LAYERS if name in names)


@dataclasses.dataclass(frozen=True)
class Config:
    # === Model ===
    width_multiplier: float = 1.0
    dropout_rate: float | None = 0.5  # None: the --init_from model's
    bias_init: float = 1.0  # conv2, conv4, conv5, fc6, fc7 (paper 1.0; Caffe 0.1)
    kernel_init: str = "paper"  # N(0, 0.01), or "he_normal"
    input_scale: float = 1.0  # after the mean subtraction; 1/64 suits "he_normal"

    # === Optimisation (paper section 5) ===
    epochs: int = 90
    global_batch_size: int = 128  # the paper's batch, whatever the number of replicas
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # an L2 term in the gradient, inside the momentum update
    lr_schedule: str = "plateau"  # "plateau" (paper), "step" or "cosine"
    plateau_patience: int = 5  # epochs without a better validation top-1 error
    plateau_factor: float = 0.1
    max_lr_reductions: int = 3  # the paper divided the rate by 10 three times
    step_epochs: int = 30  # "step": divide by 10 every step_epochs
    warmup_epochs: float = 0.0  # linear warmup from 0, any schedule

    # === Input ===
    shuffle_buffer: int = 10_000
    pca_noise_std: float = 0.1  # alpha_i ~ N(0, 0.1); 0 turns the lighting noise off

    # === Fine-tuning ===
    init_from: str | None = None  # a .keras model of this project to start from
    train_layers: str = ALL_LAYERS  # comma-separated WEIGHT_LAYERS; the others stay frozen

    # === Runtime ===
    mixed_precision: str = "off"  # "float16" (with loss scaling) or "bfloat16" on GPUs
    xla: bool = False  # compile the train step with XLA (GPU users)
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    deterministic: bool = False  # reproducible input order and augmentation (slower)

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.global_batch_size >= 1, f"global_batch_size must be >= 1, got {self.global_batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"),
            (self.checkpoint_every_steps >= 1, f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.plateau_patience >= 1, f"plateau_patience must be >= 1, got {self.plateau_patience}"),
            (0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}"),
            (self.step_epochs >= 1, f"step_epochs must be >= 1, got {self.step_epochs}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.pca_noise_std >= 0, f"pca_noise_std must be >= 0, got {self.pca_noise_std}"),
            (self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        # Frozen dataclass: the canonical spelling is stored, so that "fc8,fc7" and "fc7,fc8"
        # are the same setting in config.json, run.json and the resume checks.
        object.__setattr__(self, "train_layers", _canonical_train_layers(self.train_layers))
        if self.train_layers != ALL_LAYERS and not self.init_from:
            raise UsageError(f"--train_layers {self.train_layers} needs --init_from: without "
                             f"it the frozen layers would keep their random initial weights")

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
    # from scratch; the layers and their order are the paper's.
    "demo": Config(
        width_multiplier=0.25,
        kernel_init="he_normal",
        input_scale=1 / 64,
        bias_init=0.1,
        dropout_rate=0.0,
        epochs=25,
        global_batch_size=32,
        learning_rate=0.02,
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
