"""Answers a whole collection of images with a trained, imported or exported model: one row
per image, streamed to a JSON-lines or CSV file, resumable after a kill.

    python predict.py --model runs/demo --output predictions.jsonl photos/
    python predict.py --model exports/alexnet --output out.csv --top_k 3 a.jpg b.png
    python predict.py --model alexnet.keras --output out.jsonl --features_dir fc7/ \\
        --explain heatmaps/ records/

--model is a .keras file, a training run folder (its alexnet.keras), or an export (a version
folder, or its base: the highest version). An export answers through its serving_default
signature, the graph TF Serving runs (its features signature with --features_dir); a .keras
model through the same preprocessing and softmax. Both give the same rows.

INPUT: image files, folders (searched recursively for JPEG, PNG, GIF, BMP, WebP files; other
files and hidden ones are skipped) and records folders written by data/build_tfrecords.py
(recognised by their dataset.json; --split chooses their splits). Local paths and gs://
paths.

Each row (JSON lines): {"path", "labels", "scores", "true_label", "error"}: the top --top_k
classes and their probabilities, best first; the true class when the input names it (the
image's folder is one of the model's classes, or a records folder's label); why the image
could not be answered, else null. CSV: path, true_label, error, label_1, score_1, ... With
true classes, the run ends by printing the top-1 and top-5 error.

--features_dir writes fc7 (4096 values at full width, after its ReLU) of every answered image:
features-00000.npy, ... (float32, 10,000 rows each) and index.csv (path, file, row).
--explain writes, for each answered image, a PNG of its central crop with the Grad-CAM heatmap
of the top-1 class and its label and score (a .keras model or run folder only).

Rows are written as batches are answered, to a hidden journal beside the output
(.NAME.partial); the output appears under its name, whole, when every image has a row. A rerun
of the same command after a kill or a SIGTERM answers only the images without a row. A
finished output is never overwritten unless --overwrite is given.

Exit status: 0 every image answered; 4 the output is complete but some images could not be
answered (their rows have an error); 2 a usage error (bad flag, model or input; nothing
written); 5 the disk is full (the rows answered so far are kept: free space and rerun to
answer the rest; with --runner nothing is kept and a rerun answers every image); 143 stopped
by SIGTERM (rerun to resume).
"""

import argparse
import os
import re
import sys

from alexnet_keras_base import layout
from alexnet_keras_base.config import SERVING_MAX_PIXELS, TOP_K
from alexnet_keras_base.disk_full import rerun_keeps
from alexnet_keras_base.quiet import (
    beam_imported_quietly,
    import_tensorflow_quietly,
    native_stderr_without,
)
from alexnet_keras_cli import command, progress_bar_factory

SOME_FAILED = 4  # the exit status when the output is complete but some images failed
# What TensorFlow's C++ code logs for each image it cannot read or decode, besides the error
# the row already gives.
BAD_IMAGE_LOGS = re.compile(
    r"OP_REQUIRES failed at|local_rendezvous\.cc.*is aborting with status|jpeg_mem\.cc|"
    r"^\s*\[\[\{\{(function_)?node |gif_io\.cc|png_io\.cc|Invalid (PNG|GIF|BMP|JPEG) data"
)
SPLITS = {"all": layout.SPLITS, **{split: (split,) for split in layout.SPLITS}}


def parse_args(argv=None):
    # "resolve": with --runner, Beam's --runner and --labels replace ours.
    parser = argparse.ArgumentParser(
        description=__doc__,
        conflict_handler="resolve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders of images, records folders"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a training run folder, or an export (a version folder or its base)",
    )
    parser.add_argument(
        "--output", required=True, help="the rows: a .jsonl (JSON lines) or .csv file"
    )
    parser.add_argument(
        "--top_k", type=int, default=TOP_K, help="classes per row, best first (default %(default)s)"
    )
    parser.add_argument(
        "--batch_size", type=int, default=64, help="images per batch (default %(default)s)"
    )
    parser.add_argument(
        "--features_dir",
        help="also write fc7 of every answered image here (.npy shards and index.csv)",
    )
    parser.add_argument(
        "--explain",
        metavar="DIR",
        help="also write a Grad-CAM heatmap of "
        "every answered image here, as PNG (.keras model or run folder only)",
    )
    parser.add_argument(
        "--split",
        choices=sorted(SPLITS),
        default="all",
        help="the splits of a records folder to answer (default: all)",
    )
    parser.add_argument(
        "--labels",
        help="class names, one per line, for a .keras model "
        "(default: those of its run folder, or the ones it carries, else "
        "the class indices)",
    )
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=SERVING_MAX_PIXELS,
        help="with a .keras model, refuse images with more pixels than this, "
        "read from the header before decoding, as an export does (default: "
        "%(default)s; an export applies its own)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished output (and features and heatmaps)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--runner",
        help="run as an Apache Beam job on this runner "
        "(DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, PrismRunner) "
        "with an export as --model; Beam's pipeline options may follow, and "
        "--labels is then Dataflow's job labels (docs/beam.md)",
    )
    argv = sys.argv[1:] if argv is None else [str(argument) for argument in argv]
    if any(argument.split("=", 1)[0] == "--runner" for argument in argv):
        return _parse_with_beam_options(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if args.runner:  # an abbreviation of --runner: refused with Beam's exact option names
        return _parse_with_beam_options(parser, argv)
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (Beam pipeline options "
            f"need --runner: docs/beam.md)"
        )
    args.beam_args = None
    return args


def _parse_with_beam_options(parser, argv):
    """Our flags and Beam's pipeline options together: Beam's parser says which of its
    options take a value, so `--project p INPUT` keeps INPUT an input; anything neither
    knows is refused. -> args, with `beam_args` the tokens that are Beam's."""
    with beam_imported_quietly():
        from apache_beam.options.pipeline_options import PipelineOptions

    parser.allow_abbrev = False
    ours = set(map(id, parser._actions))
    for options in PipelineOptions.__subclasses__():
        options._add_argparse_args(parser)
    beam_options = {
        option: action
        for action in parser._actions
        if id(action) not in ours
        for option in action.option_strings
    }
    args = parser.parse_args(argv)
    if args.explain:
        parser.error(
            "--explain is not available with --runner: an export holds no "
            "gradients (run the command without --runner on a .keras model)"
        )
    args.beam_args, index = [], 0
    while index < len(argv):
        action = beam_options.get(argv[index].split("=", 1)[0])
        width = 0 if action is None else 1 if action.nargs == 0 or "=" in argv[index] else 2
        args.beam_args += argv[index : index + width]
        index += width or 1
    return args


@command(OSError)
def main(argv=None):
    args = parse_args(argv)
    import_tensorflow_quietly()
    if args.runner:
        return _run_on_beam(args)
    from alexnet_keras import prediction, prediction_inputs, prediction_outputs, predictors

    predictor = predictors.load_predictor(
        args.model, args.labels, args.max_pixels, features=args.features_dir is not None
    )
    sources = prediction_inputs.list_inputs(args.inputs, SPLITS[args.split])
    settings = {
        "model": str(args.model),
        "inputs": [str(item) for item in args.inputs],
        "top_k": args.top_k,
        "split": args.split,
        "max_pixels": args.max_pixels,
        "features_dir": args.features_dir,
        "explain": args.explain,
    }
    # The bar writes to the terminal itself; TensorFlow's logs of each bad image are kept
    # back and printed at the end without those lines.
    kept = (
        f"the rows answered so far are kept in {prediction_outputs.journal_path(args.output)}: free "
        f"space and run the same command to answer the rest"
    )
    with (
        os.fdopen(os.dup(2), "w") as terminal,
        native_stderr_without(BAD_IMAGE_LOGS),
        rerun_keeps(kept),
    ):
        summary = prediction.predict(
            sources,
            predictor,
            args.output,
            args.batch_size,
            args.top_k,
            args.features_dir,
            args.explain,
            args.overwrite,
            settings,
            progress_bar_factory("img", enabled=not args.no_progress, file=terminal),
        )
    for line in prediction.describe(summary, args.output):
        print(line)
    return SOME_FAILED if summary.failed else 0


def _run_on_beam(args):
    from alexnet_keras import beam_prediction

    with native_stderr_without(BAD_IMAGE_LOGS):
        found = beam_prediction.run(
            args.beam_args,
            args.model,
            args.output,
            args.inputs,
            args.batch_size,
            args.top_k,
            SPLITS[args.split],
            args.features_dir,
            args.overwrite,
        )
    for line in beam_prediction.describe(found, args.output):
        print(line)
    return SOME_FAILED if found[beam_prediction.REFUSED] else 0


if __name__ == "__main__":
    sys.exit(main())
