"""Trains AlexNet on TFRecords made by data/build_tfrecords.py.

    python train.py                                   # demo: synthetic data, a few CPU minutes
    python train.py --data_dir D --model_dir M        # the paper's recipe on your data
    python train.py --data_dir D --model_dir M --devices /gpu:0,/gpu:1   # the paper's 2 GPUs
    python train.py --data_dir D --model_dir M --init_from alexnet.keras [--train_layers fc8]
                                                      # fine-tune a saved model (docs/finetuning.md)

Several machines: set TF_CONFIG on each (cluster and task) and run the same command on every
worker; MultiWorkerMirroredStrategy is used and only the chief writes to --model_dir.

Running the same command again with the same --model_dir resumes from the last checkpoint.
SIGTERM (to any worker) saves a checkpoint of the whole run and exits with status 143.
A worker whose peer vanished mid-run (killed, lost machine) says which and exits with status
200; rerunning every worker resumes from the last checkpoint. Both are retryable (128-255).
A full disk stops it with status 5, permanent until space is freed: the last checkpoint stays
the one a rerun resumes from.
Outputs in --model_dir: alexnet.keras, alexnet_best.keras, checkpoints/, logs/ (TensorBoard),
history.csv, training_curves.png, config.json (the config the run started with) and run.json
(dataset, replicas, checkpointed settings, the --init_from source, and each resume with its
config changes).
"""

import argparse
import dataclasses
import pathlib
import sys

from alexnet_keras_base.config import (
    DEMO_DATASET_DIR,
    DEMO_MODEL_DIR,
    DEMO_RECORDS_DIR,
    PRESETS,
    Config,
)
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import DataDir
from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command, progress_bar_factory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir",
        help="output folder of data/build_tfrecords.py (default: "
        f"the synthetic demo dataset, built once in {DEMO_DATASET_DIR})",
    )
    parser.add_argument(
        "--model_dir",
        help=f"where checkpoints and models go (default: "
        f"{DEMO_MODEL_DIR} for the demo; required with --data_dir)",
    )
    parser.add_argument(
        "--config",
        metavar="PRESET_OR_FILE",
        help=f"a preset ({', '.join(sorted(PRESETS))}: 'paper' by default with "
        "--data_dir, 'demo' without, 'finetune' with --init_from), or a "
        "run's config.json to reproduce it; the flags below override it",
    )
    parser.add_argument(
        "--devices",
        help="comma-separated devices for MirroredStrategy, e.g. "
        "/gpu:0,/gpu:1 (default: all GPUs, else the CPU)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--require_validation",
        action="store_true",
        help="refuse data without a passing, current report of "
        "data/validate_data.py validate for the train and validation splits",
    )
    settings = parser.add_argument_group("the config's settings (default: the preset's)")
    for field in dataclasses.fields(Config):
        add_config_flag(settings, field)
    return parser.parse_args(argv)


def add_config_flag(parser, field):
    """--NAME for a Config field, with the help text the field carries; its default is None
    (not given), so that only the flags given override the preset."""
    flag, metadata = f"--{field.name}", field.metadata
    if field.type in (bool, "bool"):
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=None, help=metadata["help"]
        )
        return
    value_type = next(kind for kind in (int, float, str) if kind.__name__ in str(field.type))
    parser.add_argument(
        flag,
        type=value_type,
        choices=metadata["choices"],
        metavar=metadata["metavar"],
        help=metadata["help"],
    )


def base_config(name, data_dir, init_from):
    """The preset called `name`, or the Config of a config.json file; the default preset
    when `name` is None."""
    if name is None:
        name = "finetune" if init_from else "paper" if data_dir else "demo"
    if name in PRESETS:
        return PRESETS[name]
    path = pathlib.Path(name)
    if not path.is_file():
        raise UsageError(
            f"--config {name} is neither a preset ({', '.join(sorted(PRESETS))}) "
            f"nor a config.json file"
        )
    try:
        return Config.from_json(path.read_text())
    except (ValueError, TypeError) as error:
        raise UsageError(f"--config {path} is not a config.json of this project: {error}") from None


def resolve(args):
    """(config, data_dir, model_dir) from the flags; builds the demo dataset if needed."""
    demo = args.data_dir is None
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Config)
        if getattr(args, field.name) is not None
    }
    config = base_config(args.config, args.data_dir, args.init_from).replace(**overrides)
    if demo:
        data_dir = build_demo_dataset()
        model_dir = pathlib.Path(args.model_dir or DEMO_MODEL_DIR)
    else:
        if not args.model_dir:
            raise UsageError("--model_dir is required with --data_dir")
        data_dir, model_dir = pathlib.Path(args.data_dir), pathlib.Path(args.model_dir)
    return config, data_dir, model_dir


def build_demo_dataset():
    """The embedded synthetic dataset, generated and converted once, then reused."""
    import_tensorflow_quietly(find_devices=False)  # the converter forks its workers after
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    records = pathlib.Path(DEMO_RECORDS_DIR)
    images = pathlib.Path(DEMO_DATASET_DIR) / "images"
    if not DataDir(records).dataset_file.exists():
        print(f"building the synthetic demo dataset in {DEMO_DATASET_DIR} (once)")
        make_synthetic_dataset(images, num_classes=10, images_per_class=150)
        convert(images, records, ConvertOptions(val_fraction=0.2))
    return records


@command()
def main(argv=None):
    args = parse_args(argv)
    import_tensorflow_quietly()
    from alexnet_keras import training
    from alexnet_keras_base.config import print_config

    config, data_dir, model_dir = resolve(args)
    print_config(config)
    progress = progress_bar_factory("step", enabled=not args.no_progress)
    devices = args.devices.split(",") if args.devices else None
    if args.require_validation:
        from alexnet_keras_base.validation_report import check_validated

        check_validated(data_dir)
    training.train(config, data_dir, model_dir, devices=devices, progress=progress)
    print(f"models and logs are in {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
