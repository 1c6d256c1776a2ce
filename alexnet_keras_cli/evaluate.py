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
most_confused.png; for a .keras file or a run folder also most_confused_images.png (the
first images of the 3 most confused pairs with their Grad-CAM heatmaps). --report PATH writes
the JSON alone to PATH instead.

--figures adds the paper's Figures 3 and 4 to the report folder (a .keras file or run folder
only): conv1_kernels.png, the conv1 kernels, and nearest_neighbours.png / .json, six
validation images and the six training images nearest to each in fc7. fc7 of the training
split is kept in fc7_train.npy (float16; about 10 GB for ImageNet) and reused by later runs
of the same model on the same data.
"""

import argparse
import pathlib
import sys

from alexnet_keras_base.config import DEMO_MODEL_DIR, DEMO_RECORDS_DIR
from alexnet_keras_base.layout import RunDir
from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command, progress_bar_factory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=DEMO_MODEL_DIR,
        help="a .keras file, a training run folder or an export version "
        "folder (default: %(default)s)",
    )
    parser.add_argument(
        "--best", action="store_true", help="with a run folder: evaluate alexnet_best.keras"
    )
    parser.add_argument(
        "--data_dir",
        help="output folder of data/build_tfrecords.py (default: "
        "the data the run was trained on, from its run.json, else "
        f"{DEMO_RECORDS_DIR})",
    )
    parser.add_argument(
        "--split",
        default="validation",
        help="which split to evaluate: validation or train (default: validation)",
    )
    parser.add_argument("--ten_crops", action="store_true", help="10-crop testing, as the paper")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument(
        "--output_dir", help="report folder (default: <model folder>/evaluation_<split>[_10crop]/)"
    )
    parser.add_argument("--report", help="write only the JSON report, to this path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--figures",
        action="store_true",
        help="also write the paper's figures 3 and 4 into the report folder: "
        "conv1_kernels.png, nearest_neighbours.png and .json (computes "
        "fc7 of the training split once, into fc7_train.npy)",
    )
    args = parser.parse_args(argv)
    if args.figures and args.report:
        parser.error("--figures writes into a report folder: use --output_dir, not --report")
    return args


def default_data_dir(model_path):
    """The data a training run used (its run.json), else the demo records."""
    model_path = pathlib.Path(model_path)
    for folder in (model_path, model_path.parent):
        data_dir = RunDir(folder).data_dir()
        if data_dir is not None:
            return str(data_dir.path)
    return DEMO_RECORDS_DIR


@command(FileNotFoundError)
def main(argv=None):
    args = parse_args(argv)
    import_tensorflow_quietly()
    from alexnet_keras import evaluation, evaluation_report

    progress = progress_bar_factory("img", enabled=not args.no_progress)
    data_dir = args.data_dir or default_data_dir(args.model)
    if args.figures:  # before the evaluation, not after it
        from alexnet_keras.figures import keras_model_path

        keras_model_path(args.model, args.best)
    report = evaluation.evaluate_model(
        args.model, data_dir, args.split, args.batch_size, args.ten_crops, args.best, progress
    )
    print(evaluation_report.summary(report))
    if args.report:
        evaluation_report.write_report(report, args.report)
        print(f"report: {args.report}")
    else:
        output_dir = args.output_dir or evaluation.default_output_dir(
            args.model, args.split, args.ten_crops, args.best
        )
        evaluation_report.write_report_folder(report, output_dir)
        print(f"report: {output_dir}/ ({', '.join(evaluation_report.report_files(report))})")
        if report["model"]["kind"] != "keras":
            print(evaluation_report.NO_GRADCAM_NOTE)
        if args.figures:
            from alexnet_keras import figures

            figures.write_figures(
                args.model, data_dir, output_dir, args.best, args.batch_size, progress
            )
            print(f"figures: {output_dir}/ ({', '.join(figures.FIGURE_FILES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
