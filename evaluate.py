"""Evaluates a trained or exported model with the paper's metrics, top-1 and top-5 error, and
writes a report folder people can look at.

    python evaluate.py                                          # the demo run
    python evaluate.py --model runs/alexnet --data_dir ~/records --ten_crops
    python evaluate.py --model exports/alexnet/3 --data_dir ~/records   # what is served

--model is a .keras file, a training run folder (its alexnet.keras; --best for
alexnet_best.keras), or an exported SavedModel version folder (or the export base: its highest
version), evaluated through its predict_pixels signature on the same crops, so served and
trained numbers compare on the same images. --ten_crops averages the softmax over the paper's
ten patches (four corners and the centre, and their mirrors); otherwise the central 227x227
crop is used.

The report folder (default: <model folder>/evaluation_<split>[_10crop]/) holds report.json
(every metric, the confusion matrix, the 10 most confused pairs, the identity of model and
data), per_class.csv (examples, top-1 error, precision, recall), confusion_matrix.png and
most_confused.png. --report PATH writes the JSON alone to PATH instead.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEMO_MODEL_DIR = "runs/demo"  # alexnet_keras.config's, without importing TensorFlow
DEMO_RECORDS_DIR = "datasets/synthetic/records"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL_DIR,
                        help="a .keras file, a training run folder or an export version "
                             "folder (default: %(default)s)")
    parser.add_argument("--best", action="store_true",
                        help="with a run folder: evaluate alexnet_best.keras")
    parser.add_argument("--data_dir", help="output folder of data/build_tfrecords.py (default: "
                        "the data the run was trained on, from its run.json, else "
                        f"{DEMO_RECORDS_DIR})")
    parser.add_argument("--split", default="validation",
                        help="which split to evaluate: validation or train (default: validation)")
    parser.add_argument("--ten_crops", action="store_true", help="10-crop testing, as the paper")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--output_dir", help="report folder (default: <model folder>/"
                        "evaluation_<split>[_10crop]/)")
    parser.add_argument("--report", help="write only the JSON report, to this path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def default_data_dir(model_path):
    """The data a training run used (its run.json), else the demo records."""
    import json

    model_path = pathlib.Path(model_path)
    for folder in (model_path, model_path.parent):
        run_file = folder / "run.json"
        if run_file.is_file():
            data_dir = json.loads(run_file.read_text()).get("data_dir")
            if data_dir:
                return data_dir
    return DEMO_RECORDS_DIR


def main(argv=None):
    args = parse_args(argv)
    from alexnet_keras import evaluation

    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        def progress(total):
            return tqdm(total=total, desc=f"evaluating {args.split}", unit="img",
                        file=sys.stderr, leave=False)

    try:
        data_dir = args.data_dir or default_data_dir(args.model)
        report = evaluation.evaluate_model(args.model, data_dir, args.split, args.batch_size,
                                           args.ten_crops, args.best, progress)
        print(evaluation.summary(report))
        if args.report:
            evaluation.write_report(report, args.report)
            print(f"report: {args.report}")
        else:
            output_dir = args.output_dir or evaluation.default_output_dir(
                args.model, args.split, args.ten_crops, args.best)
            evaluation.write_report_folder(report, output_dir)
            print(f"report: {output_dir}/ ({', '.join(evaluation.REPORT_FILES)})")
    except (evaluation.EvaluationError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
