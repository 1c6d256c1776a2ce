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
Outputs in --model_dir: alexnet.keras, alexnet_best.keras, checkpoints/, logs/ (TensorBoard),
history.csv, training_curves.png, config.json (the config the run started with) and run.json
(dataset, replicas, checkpointed settings, the --init_from source, and each resume with its
config changes).
"""

import argparse
import pathlib
import sys

from alexnet_keras_cli import import_tensorflow_quietly, progress_bar_factory
from alexnet_keras_cli.config import (
    DEMO_DATASET_DIR,
    DEMO_MODEL_DIR,
    DEMO_RECORDS_DIR,
    LR_SCHEDULES,
    MIXED_PRECISION,
    PRESETS,
)
from alexnet_keras_cli.layout import DataDir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="output folder of data/build_tfrecords.py (default: "
                        f"the synthetic demo dataset, built once in {DEMO_DATASET_DIR})")
    parser.add_argument("--model_dir", help=f"where checkpoints and models go (default: {DEMO_MODEL_DIR} "
                        "for the demo; required with --data_dir)")
    parser.add_argument("--config", choices=sorted(PRESETS), default=None,
                        help="preset: 'paper' (default with --data_dir), 'demo' (default without) "
                             "or 'finetune' (default with --init_from)")
    parser.add_argument("--init_from", metavar="MODEL",
                        help="start from the weights of a .keras model of this project (a run's "
                             "alexnet.keras or an imported one); its width, LRN and mean are kept, "
                             "fc8 is replaced when the data has another number of classes")
    parser.add_argument("--train_layers", metavar="LAYERS",
                        help="with --init_from: comma-separated layers to train among conv1, "
                             "conv2, conv3, conv4, conv5, fc6, fc7, fc8, or 'all' (default); "
                             "the others stay exactly as loaded")
    parser.add_argument("--epochs", type=int, help="number of epochs (paper: 90)")
    parser.add_argument("--global_batch_size", type=int,
                        help="images per step over all replicas (paper: 128)")
    parser.add_argument("--learning_rate", type=float, help="initial learning rate (paper: 0.01)")
    parser.add_argument("--weight_decay", type=float, help="L2 weight decay (paper: 0.0005)")
    parser.add_argument("--lr_schedule", choices=LR_SCHEDULES,
                        help="'plateau' divides by 10 when validation top-1 stops improving "
                             "(paper); 'step' every --step_epochs; 'cosine'")
    parser.add_argument("--plateau_patience", type=int, help="epochs without improvement before a reduction")
    parser.add_argument("--max_lr_reductions", type=int, help="plateau reductions at most (paper: 3)")
    parser.add_argument("--step_epochs", type=int, help="'step' schedule: epochs between reductions")
    parser.add_argument("--warmup_epochs", type=float, help="linear warmup length in epochs")
    parser.add_argument("--width_multiplier", type=float, help="channel scale; 1.0 is the paper's network")
    parser.add_argument("--dropout_rate", type=float, help="dropout after fc6 and fc7 (paper: 0.5; "
                        "with --init_from the model's by default)")
    parser.add_argument("--devices", help="comma-separated devices for MirroredStrategy, e.g. "
                        "/gpu:0,/gpu:1 (default: all GPUs, else the CPU)")
    parser.add_argument("--mixed_precision", choices=MIXED_PRECISION,
                        help="mixed precision for GPUs; float16 uses loss scaling")
    parser.add_argument("--xla", action="store_true", default=None,
                        help="compile the training step with XLA")
    parser.add_argument("--checkpoint_every_steps", type=int, help="checkpoint interval in steps")
    parser.add_argument("--keep_checkpoints", type=int, help="how many checkpoints to keep")
    parser.add_argument("--shuffle_buffer", type=int, help="examples in the shuffle buffer")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="reproducible input order and augmentation (slower)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--require_validation", action="store_true",
                        help="refuse data without a passing, current report of "
                             "data/validate_data.py validate for the train and validation splits")
    return parser.parse_args(argv)


def resolve(args):
    """(config, data_dir, model_dir) from the flags; builds the demo dataset if needed."""
    from alexnet_keras_cli.config import PRESETS, UsageError

    demo = args.data_dir is None
    preset = args.config or ("finetune" if args.init_from else "demo" if demo else "paper")
    overrides = {name: getattr(args, name) for name in (
        "epochs", "global_batch_size", "learning_rate", "weight_decay", "lr_schedule",
        "plateau_patience", "max_lr_reductions", "step_epochs", "warmup_epochs",
        "width_multiplier", "dropout_rate", "mixed_precision", "xla", "checkpoint_every_steps",
        "keep_checkpoints", "shuffle_buffer", "seed", "deterministic", "init_from",
        "train_layers")
        if getattr(args, name) is not None}
    config = PRESETS[preset].replace(**overrides)
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
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import convert

    records = pathlib.Path(DEMO_RECORDS_DIR)
    images = pathlib.Path(DEMO_DATASET_DIR) / "images"
    if not DataDir(records).dataset_file.exists():
        print(f"building the synthetic demo dataset in {DEMO_DATASET_DIR} (once)")
        make_synthetic_dataset(images, num_classes=10, images_per_class=150)
        convert(images, records, val_fraction=0.2)
    return records


def main(argv=None):
    args = parse_args(argv)
    import_tensorflow_quietly()
    from alexnet_keras import training
    from alexnet_keras_cli.config import UsageError, print_config

    try:
        config, data_dir, model_dir = resolve(args)
        print_config(config)
        progress = progress_bar_factory("step", enabled=not args.no_progress)
        devices = args.devices.split(",") if args.devices else None
        if args.require_validation:
            from alexnet_keras_cli.validation_report import ValidationRequired, check_validated

            try:
                check_validated(data_dir)
            except ValidationRequired as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        training.train(config, data_dir, model_dir, devices=devices, progress=progress)
    except training.Preempted as stop:
        print(stop, file=sys.stderr)
        return training.PREEMPTED_EXIT_CODE
    except training.PeerLost as lost:
        print(f"error: {lost}", file=sys.stderr)
        return training.PEER_LOST_EXIT_CODE
    except training.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except UsageError as error:  # raised on purpose, with what to do; anything else is a bug
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"models and logs are in {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
