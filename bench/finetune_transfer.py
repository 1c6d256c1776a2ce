"""Does fine-tuning transfer? A source network trained on five synthetic classes, then the
`finetune` recipe on five other classes from a few images each, against the same recipe from
scratch, over several seeds; the figures of docs/finetuning.md and the bar of
tests/test_finetune.py.

    python bench/finetune_transfer.py [--seeds 0 1 2 3 4] [--learning_rates 0.001 0.003]
    python bench/finetune_transfer.py --smoke   # seconds: that it runs

The source is the `demo` recipe at --width on SOURCE_CLASSES (--source_images per class, a
fifth held out), trained once per --work_dir. Each target dataset holds TARGET_CLASSES,
--target_train training and --target_val validation images per class, drawn with the seed.
For each seed and learning rate it trains `finetune` with `--init_from` the source, and the
same config without it (the source's width, input scale, He initialisation and dropout), so
that the only difference is the starting weights. Every run is `deterministic`. Prints the
validation accuracy of the last epoch of every run, then the medians and the smallest
difference. The defaults are the setting of tests/test_finetune.py's transfer test.
"""

import argparse
import contextlib
import json
import pathlib
import shutil
import statistics
import tempfile

from peer_speed import cpu_name

from common import parse_args  # also puts the checkout on sys.path

SOURCE_CLASSES = ("circle", "triangle", "stripes", "ring", "dots")
TARGET_CLASSES = ("square", "star", "cross", "checkerboard", "crescent")


def make_records(folder, classes, train_per_class, val_per_class, seed):
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    total = train_per_class + val_per_class
    shutil.rmtree(folder, ignore_errors=True)
    make_synthetic_dataset(folder / "images", images_per_class=total, seed=seed, classes=classes)
    convert(
        folder / "images",
        folder / "records",
        ConvertOptions(val_fraction=val_per_class / total, num_shards=2, workers=2),
        log=lambda message: None,
    )
    return folder / "records"


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--source_images", type=int, default=150)
    parser.add_argument("--source_epochs", type=int, default=20)
    parser.add_argument("--source_batch_size", type=int, default=16)
    parser.add_argument(
        "--source_learning_rate",
        type=float,
        default=0.02,
        help="the demo recipe's rate when the figures in docs/finetuning.md "
        "were measured (default %(default)s)",
    )
    parser.add_argument("--source_classes", nargs="+", default=SOURCE_CLASSES)
    parser.add_argument("--target_classes", nargs="+", default=TARGET_CLASSES)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="further config changes of both recipes, e.g. warmup_epochs=1",
    )
    parser.add_argument("--target_train", type=int, default=10)
    parser.add_argument("--target_val", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--global_batch_size",
        type=int,
        default=10,
        help="50 training images: the preset's 32 would make one step an epoch",
    )
    parser.add_argument("--dropout_rate", type=float, default=None, help="default: the preset's")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=None)
    parser.add_argument("--train_layers", default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip_scratch", action="store_true", help="fine-tuned runs only")
    parser.add_argument("--work_dir", type=pathlib.Path, default=None)
    args = parse_args(
        parser,
        argv,
        smoke=dict(
            source_images=5,
            source_epochs=1,
            source_batch_size=4,
            target_train=1,
            target_val=1,
            epochs=1,
            global_batch_size=5,
            seeds=[0],
        ),
    )
    return args


def train_source(args, work):
    """The source network of --source_classes, trained once per work folder; its path."""
    from alexnet_keras import training
    from alexnet_keras_base.config import PRESETS

    source_dir = work / "source"
    source_model = source_dir / "model" / "alexnet.keras"
    if not source_model.exists():
        records = make_records(
            source_dir,
            args.source_classes,
            args.source_images * 4 // 5,
            args.source_images // 5,
            seed=100,
        )
        source_config = PRESETS["demo"].replace(
            width_multiplier=args.width,
            epochs=args.source_epochs,
            global_batch_size=args.source_batch_size,
            learning_rate=args.source_learning_rate,
            deterministic=True,
        )
        results = training.train(source_config, records, source_dir / "model", log=print)
        print(
            f"source: validation accuracy {1 - results[-1].val_top1_error:.3f} after "
            f"{args.source_epochs} epochs"
        )
    return source_model


def compare(args, work, source_model):
    """Fine-tuned against from scratch, for each seed and learning rate; prints the figures."""
    from alexnet_keras import training
    from alexnet_keras_base.config import PRESETS

    recipe = PRESETS["finetune"].replace(deterministic=True)
    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "global_batch_size", "dropout_rate")
        if getattr(args, name) is not None
    }
    for change in args.set:
        name, value = change.split("=", 1)
        overrides[name] = (
            json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
        )
    rates = args.learning_rates or [recipe.learning_rate]
    differences = {rate: [] for rate in rates}
    accuracies = {(rate, kind): [] for rate in rates for kind in ("finetuned", "scratch")}
    for seed in args.seeds:
        records = make_records(
            work / f"target_{seed}",
            args.target_classes,
            args.target_train,
            args.target_val,
            seed=seed,
        )
        for rate in rates:
            finetuned = recipe.replace(
                learning_rate=rate,
                seed=seed,
                init_from=str(source_model),
                train_layers=args.train_layers,
                **overrides,
            )
            # The source's architecture and initialisation, from random weights.
            scratch = recipe.replace(
                learning_rate=rate,
                seed=seed,
                width_multiplier=args.width,
                input_scale=PRESETS["demo"].input_scale,
                kernel_init=PRESETS["demo"].kernel_init,
                # the source's dropout, as the fine-tuned run adopts it
                **{"dropout_rate": PRESETS["demo"].dropout_rate, **overrides},
            )
            row = {}
            runs = [("finetuned", finetuned)] + (
                [] if args.skip_scratch else [("scratch", scratch)]
            )
            for kind, config in runs:
                model_dir = work / f"{kind}_{seed}_{rate:g}"
                shutil.rmtree(model_dir, ignore_errors=True)  # a fresh run, not a resume
                results = training.train(config, records, model_dir, log=lambda m: None)
                row[kind] = 1 - results[-1].val_top1_error
                accuracies[(rate, kind)].append(row[kind])
            row.setdefault("scratch", float("nan"))
            if not args.skip_scratch:
                differences[rate].append(row["finetuned"] - row["scratch"])
            print(
                f"seed {seed} lr {rate:g}: fine-tuned {row['finetuned']:.3f}, "
                f"from scratch {row['scratch']:.3f} ({len(results)} epochs)",
                flush=True,
            )
    for rate in rates:
        tuned = accuracies[(rate, "finetuned")]
        summary = (
            f"lr {rate:g}: fine-tuned median {statistics.median(tuned):.3f} (min {min(tuned):.3f})"
        )
        if not args.skip_scratch:
            scratch = accuracies[(rate, "scratch")]
            summary += (
                f", from scratch median {statistics.median(scratch):.3f} (max "
                f"{max(scratch):.3f}); difference min {min(differences[rate]):.3f}"
            )
        print(summary)


def main(argv=None):
    args = arguments(argv)
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = args.work_dir
        elif args.smoke:  # a smoke run leaves nothing behind
            work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            work = pathlib.Path(tempfile.mkdtemp(prefix="finetune-transfer-"))
        print(f"CPU: {cpu_name()}; work folder {work}")
        compare(args, work, train_source(args, work))


if __name__ == "__main__":
    main()
