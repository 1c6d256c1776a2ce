"""Fine-tuning: a run that starts from a saved model of this project (`--init_from`).

The source is any `.keras` AlexNet of ours: a trained `alexnet.keras`, or ImageNet's weights
imported by import_weights.py. Its architecture (width, LRN constants, input scale) is read
from the file's config; the run's network is built again by `build_alexnet` under the run's
dtype policy and receives the source's weights layer by layer, the mean included: the
weights were trained on inputs centred by that mean. fc8 is kept when the data has the
source's classes, else replaced by a fresh layer. `freeze` leaves the layers not named
in `--train_layers` out of `model.trainable_variables`, so that the optimizer never sees them
(no update, no weight decay, no slots) and no gradient flows below the lowest trained layer.
"""

import dataclasses
import json
import pathlib
import zipfile

import keras

from alexnet_keras.layers import LRN_PAPER
from alexnet_keras.model import PAPER_WIDTHS, mean_layer
from alexnet_keras.serving import labels_for_model
from alexnet_keras_base.config import WEIGHT_LAYERS
from alexnet_keras_base.errors import UsageError


@dataclasses.dataclass(frozen=True)
class SourceArchitecture:
    """What a saved AlexNet says about its own network, besides its weights."""

    width_multiplier: float
    input_scale: float
    lrn: dict
    num_classes: int
    dropout_rate: float

    @classmethod
    def of_scratch_run(cls, config):
        """A run without a source: the config's network with the paper's LRN."""
        return cls(
            width_multiplier=config.width_multiplier,
            input_scale=config.input_scale,
            lrn=dict(LRN_PAPER),
            num_classes=0,
            dropout_rate=config.dropout_rate,
        )


def read_architecture(path):
    """The SourceArchitecture of the `.keras` file at `path`, read from the model config the
    file holds, without loading its weights."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(
            f"--init_from {path} does not exist: give a .keras model of this "
            f"project (a run's alexnet.keras, or import_weights.py's output)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            model_config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise UsageError(
            f"--init_from {path} is not a .keras model file (a zip archive with a config.json)"
        ) from None
    layers = {
        layer.get("config", {}).get("name"): layer
        for layer in model_config.get("config", {}).get("layers", [])
    }
    missing = [
        name
        for name in (*WEIGHT_LAYERS, "norm1", "mean_subtraction", "dropout6")
        if name not in layers
    ]
    if missing:
        raise UsageError(
            f"--init_from {path} is not an AlexNet of this project: it has no "
            f"layer {', '.join(missing)}"
        )
    lrn = {key: layers["norm1"]["config"][key] for key in LRN_PAPER}
    return SourceArchitecture(
        width_multiplier=layers["conv1"]["config"]["filters"] / PAPER_WIDTHS["conv1"],
        input_scale=float(layers["mean_subtraction"]["config"]["scale"]),
        lrn=lrn,
        num_classes=int(layers["fc8"]["config"]["units"]),
        dropout_rate=float(layers["dropout6"]["config"]["rate"]),
    )


def run_architecture(config, recorded, log=print):
    """(config, architecture) of a run: with `config.init_from`, the width and input scale
    of the config become the source's (logged when they change), and so does a dropout rate
    of None. `recorded` is the
    architecture a checkpointed run recorded in run.json, or None: a resume keeps it, so the
    source need not exist any more once checkpoints do."""
    if not config.init_from:
        if config.dropout_rate is None:
            raise UsageError(
                "a dropout rate of None means the --init_from model's: give "
                "--init_from or --dropout_rate"
            )
        return config, SourceArchitecture.of_scratch_run(config)
    if recorded is not None:
        architecture = SourceArchitecture(**recorded)
    else:
        architecture = read_architecture(config.init_from)
    adopted = {
        "width_multiplier": architecture.width_multiplier,
        "input_scale": architecture.input_scale,
    }
    changed = {name: value for name, value in adopted.items() if getattr(config, name) != value}
    if changed:
        log(
            "from --init_from: "
            + ", ".join(
                f"{name} {value:g} (not {getattr(config, name):g})"
                for name, value in changed.items()
            )
        )
    if config.dropout_rate is None:
        adopted["dropout_rate"] = architecture.dropout_rate
        log(f"from --init_from: dropout_rate {architecture.dropout_rate:g}")
    return config.replace(**adopted), architecture


def load_source(path):
    """The source model, its weights as saved; call it outside a strategy's scope."""
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"--init_from {path} could not be loaded ({reason}): is it a .keras "
            f"model of this project?"
        ) from None


def keeps_fc8(source_path, source_classes, class_names):
    """(keep, reason): fc8 is kept when the data has as many classes as the source and,
    where the source's class names are known (the run.json of its run folder, as for an
    export), the same ones in the same order: another set of classes of the same size would
    start from a classifier that is confidently wrong."""
    if source_classes != len(class_names):
        return False, f"in place of the source's {source_classes}"
    source_names = labels_for_model(source_path)
    if source_names is not None and list(source_names) != list(class_names):
        return False, (
            f"in place of the source's {source_classes}, which are other classes "
            f"({', '.join(source_names[:5])}{', ...' if source_classes > 5 else ''})"
        )
    return True, None


def copy_weights(source, model, keep_fc8, log=print):
    """Copies the source's weights into `model`, layer by layer, its mean included, and fc8
    when `keep_fc8`."""
    for layer in model.layers:
        if not layer.weights or (layer.name == "fc8" and not keep_fc8):
            continue
        values = source.get_layer(layer.name).get_weights()
        shapes = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != shapes:
            raise UsageError(
                f"--init_from: layer {layer.name} holds weights of shapes "
                f"{[value.shape for value in values]}, this network {shapes}"
            )
        layer.set_weights(values)
    mean = ", ".join(f"{value:.2f}" for value in mean_layer(model).mean.numpy())
    log(
        f"from --init_from: the weights of conv1..{'fc8' if keep_fc8 else 'fc7'} and the "
        f"source's RGB mean ({mean})"
    )


def freeze(model, trained_layers):
    """Leaves every layer of WEIGHT_LAYERS not in `trained_layers` out of
    `model.trainable_variables`."""
    for name in WEIGHT_LAYERS:
        model.get_layer(name).trainable = name in trained_layers
