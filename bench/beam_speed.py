"""The prediction job on Beam's DirectRunner against the local command, on the same folder of
JPEGs, the same export and batch size, in one process, alternating.

    python bench/beam_speed.py                          # paper network, 1000 classes
    python bench/beam_speed.py --images 128 --width_multiplier 0.25

Each round runs both commands as a user runs them (`predict.py ...` and `predict.py --runner
DirectRunner ...`: model load, listing, reading, the export's serving_default, writing the
rows) on --images photos and on --few of them. Images/s is over the whole command; the
difference is split into a fixed cost (the time on --few images, which is mostly start-up)
and a per-image cost (the slope between the two runs), beside the per-image time of the
export's serving_default alone on the same bytes in batches of --batch_size (what both must
spend) and the mean batch size that Beam's BatchElements made.
"""

import argparse
import contextlib
import io
import os
import pathlib
import re
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving_speed import photo_jpeg

from common import print_results  # also puts the checkout on sys.path

from alexnet_keras import build_alexnet, predictors, serving
from alexnet_keras_cli import predict


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--few", type=int, default=8, help="images of the start-up run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def seconds(arguments, output):
    """Wall seconds of one run of the prediction command, and what it printed."""
    for old in output.parent.glob(f"{output.stem}*"):
        old.unlink()
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        status = predict.main([*arguments, "--output", str(output)])
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"predict.py {' '.join(arguments)} ended with status {status}")
    return elapsed, printed.getvalue()


def signature_seconds(export, folder, batch_size):
    """Seconds of the export's serving_default alone on the folder's bytes, in batches: what
    both commands must spend."""
    predictor = predictors.ExportPredictor(export)
    images = [path.read_bytes() for path in sorted(folder.iterdir())]
    predictor.answer(images[:batch_size])  # traced and warm
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        predictor.answer(images[first : first + batch_size])
    return time.perf_counter() - start


def main():
    args = parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="beam-speed-"))
    try:
        model = build_alexnet(num_classes=args.num_classes, width_multiplier=args.width_multiplier)
        labels = [f"class_{index}" for index in range(args.num_classes)]
        export = serving.export_model(model, work / "export", labels, log=lambda line: None)
        folders = {"all": work / "all", "few": work / "few"}
        for name, count in (("all", args.images), ("few", args.few)):
            folders[name].mkdir()
            for index in range(count):
                (folders[name] / f"photo_{index:05d}.jpg").write_bytes(photo_jpeg(index))
        common = ["--model", str(export), "--batch_size", str(args.batch_size)]
        commands = {
            "local": [*common, "--no_progress", "--overwrite"],
            "beam": ["--runner", "DirectRunner", *common, "--overwrite"],
        }
        times = {(command, size): [] for command in commands for size in folders}
        times["signature", "all"] = []
        batches = []
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            for (command, size), record in times.items():
                if command == "signature":
                    record.append(signature_seconds(export, folders["all"], args.batch_size))
                    continue
                elapsed, printed = seconds(
                    [*commands[command], str(folders[size])],
                    work / "out" / f"{command}_{size}.jsonl",
                )
                record.append(elapsed)
                if command == "beam" and size == "all":
                    batches.append(int(re.search(r"\bbatches (\d+)", printed)[1]))
        median = {key: statistics.median(values[1:]) for key, values in times.items()}
        slope = {
            command: (median[command, "all"] - median[command, "few"]) / (args.images - args.few)
            for command in commands
        }
        print_results(
            {
                "images": args.images,
                "batch_size": args.batch_size,
                "width_multiplier": args.width_multiplier,
                "local images/s": round(args.images / median["local", "all"], 2),
                "DirectRunner images/s": round(args.images / median["beam", "all"], 2),
                "DirectRunner / local": round(median["local", "all"] / median["beam", "all"], 3),
                f"fixed cost s (run on {args.few} images), local": round(median["local", "few"], 2),
                f"fixed cost s (run on {args.few} images), DirectRunner": round(
                    median["beam", "few"], 2
                ),
                "per-image ms, local": round(1000 * slope["local"], 2),
                "per-image ms, DirectRunner": round(1000 * slope["beam"], 2),
                "per-image ms, serving_default alone": round(
                    1000 * median["signature", "all"] / args.images, 2
                ),
                "s beyond serving_default, local": round(
                    median["local", "all"] - median["signature", "all"], 2
                ),
                "s beyond serving_default, DirectRunner": round(
                    median["beam", "all"] - median["signature", "all"], 2
                ),
                "DirectRunner's mean batch size": round(
                    args.images / statistics.median(batches), 1
                ),
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
