"""The record of a training run: one EpochResult per epoch, `history.csv`, the curves, and the
line logged at each epoch end."""

import csv
import dataclasses

from alexnet_keras.plots import pyplot, save_figure
from alexnet_keras_base.files import replaced_atomically
from alexnet_keras_base.layout import RunDir


@dataclasses.dataclass
class EpochResult:
    epoch: int  # 0-based
    train_loss: float
    train_top1_error: float
    train_top5_error: float
    val_loss: float
    val_top1_error: float
    val_top5_error: float
    learning_rate: float  # the rate of the epoch's last step
    images_per_second: float
    seconds: float  # training time of the epoch, without validation and without restarts


def write_history(model_dir, rows):
    """Writes `history.csv` (one dict per epoch, EpochResult's fields) in place of the old one."""
    fields = [field.name for field in dataclasses.fields(EpochResult)]
    with replaced_atomically(RunDir(model_dir).history_file) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def read_history(model_dir, before_epoch):
    """The rows of `history.csv` for the epochs before `before_epoch` (those a resumed run
    keeps); [] when there is no history yet."""
    path = RunDir(model_dir).history_file
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) < before_epoch]


def plot_training_curves(rows, path):
    """training_curves.png: loss and top-1 / top-5 error per epoch, train and validation."""
    plt = pyplot()
    epochs = [int(row["epoch"]) + 1 for row in rows]
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    loss_axis.plot(epochs, [float(r["val_loss"]) for r in rows], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    for key, style in (("top1", "-"), ("top5", "--")):
        error_axis.plot(
            epochs, [float(r[f"train_{key}_error"]) for r in rows], style, label=f"train {key}"
        )
        error_axis.plot(
            epochs, [float(r[f"val_{key}_error"]) for r in rows], style, label=f"validation {key}"
        )
    error_axis.set(xlabel="epoch", ylabel="error", title="Top-1 / top-5 error", ylim=(0, 1))
    for axis in (loss_axis, error_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=90)


def describe_epoch(result, epochs, eta_seconds):
    """The line logged at the end of an epoch."""
    return (
        f"epoch {result.epoch + 1}/{epochs}: loss {result.train_loss:.4f}, "
        f"top-1 error {result.train_top1_error:.4f}, top-5 error {result.train_top5_error:.4f} | "
        f"validation loss {result.val_loss:.4f}, top-1 error {result.val_top1_error:.4f}, "
        f"top-5 error {result.val_top5_error:.4f} | lr {result.learning_rate:.3g}, "
        f"{result.images_per_second:.1f} images/s, {result.seconds:.1f} s, "
        f"ETA {eta_seconds / 60:.1f} min"
    )
