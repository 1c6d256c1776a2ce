"""Evaluates a trained model with the paper's metrics: top-1 and top-5 error.

    python evaluate.py                                        # the demo run
    python evaluate.py --model runs/alexnet/alexnet.keras --data_dir ~/records --ten_crops

--ten_crops averages the softmax over the paper's ten patches (four corners and the centre,
and their mirrors); without it the central 227x227 crop is used. Prints the errors and writes
them, with the per-class top-1 error, to a JSON report next to the model.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alexnet_keras.config import DEMO_MODEL_DIR, DEMO_RECORDS_DIR  # noqa: E402
from alexnet_keras.training import FINAL_MODEL  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(pathlib.Path(DEMO_MODEL_DIR) / FINAL_MODEL),
                        help="a .keras file written by train.py (default: %(default)s)")
    parser.add_argument("--data_dir", default=DEMO_RECORDS_DIR,
                        help="output folder of data/build_tfrecords.py (default: %(default)s)")
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="which split to evaluate (default: validation)")
    parser.add_argument("--ten_crops", action="store_true", help="10-crop testing, as the paper")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--report", help="where to write the JSON report (default: next to "
                        "the model, evaluation_<split>[_10crop].json)")
    args = parser.parse_args(argv)

    from alexnet_keras import evaluation

    try:
        report = evaluation.evaluate_model_file(args.model, args.data_dir, args.split,
                                                args.batch_size, args.ten_crops)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    crops = "10-crop" if args.ten_crops else "central crop"
    print(f"{args.split}, {crops}, {report['examples']} images: top-1 error "
          f"{report['top1_error']:.4f}, top-5 error {report['top5_error']:.4f}, "
          f"loss {report['loss']:.4f}")
    path = pathlib.Path(args.report) if args.report else pathlib.Path(args.model).with_name(
        f"evaluation_{args.split}{'_10crop' if args.ten_crops else ''}.json")
    evaluation.write_report(report, path)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
