"""Exports a trained model as a versioned SavedModel for TensorFlow Serving, or as one LiteRT
or ONNX file for runtimes without TensorFlow.

    python export/export_model.py --model runs/X/alexnet.keras --export_base exports/alexnet
    python export/export_model.py --model runs/X/alexnet.keras --output alexnet.tflite
    python export/export_model.py --model runs/X/alexnet.keras --output alexnet.onnx

Writes exports/alexnet/<version>/ (default: the highest version present + 1), built in a
hidden folder beside the base and renamed into place when complete, so a server polling the
base never loads half a version and a killed export leaves none. Existing versions are never
overwritten. Signatures: serving_default (image_bytes: encoded JPEG / PNG / GIF / BMP / WebP
images), predict_pixels (images: float32 [batch, 227, 227, 3] RGB in [0, 255]) and features
(image_bytes, as serving_default); all answer probabilities, top_k_classes, top_k_labels and
top_k_scores, and features also fc7 (float32 [batch, 4096] at the paper's width: the layer
before the classifier, after its ReLU, from the same pass). The class names travel inside the
SavedModel (assets/labels.txt); warmup requests for serving_default and features are in
assets.extra/.

--output writes a LiteRT (.tflite) or ONNX (.onnx) file, chosen by the extension, with the
contract of predict_pixels: input images, float32 [batch, 227, 227, 3] RGB in [0, 255];
output probabilities. The class names are in the file's metadata, under "labels".
--quantize weights (LiteRT) stores int8 weights; --quantize int8 also quantizes the
activations, calibrated on --calibration_data (a records folder), except the LRN layers,
which LiteRT runs in float only. The file is written under a temporary name and renamed.
"""

import argparse
import pathlib
import sys

from alexnet_keras_base.config import SERVING_MAX_PIXELS
from alexnet_keras_base.disk_full import rerun_keeps
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a .keras file written by train.py")
    destination = parser.add_mutually_exclusive_group(required=True)
    destination.add_argument(
        "--export_base",
        help="the model's folder that TF Serving watches, e.g. exports/alexnet",
    )
    destination.add_argument(
        "--output",
        help="a LiteRT (.tflite) or ONNX (.onnx) file to write, instead of a SavedModel",
    )
    parser.add_argument(
        "--quantize",
        help="LiteRT only: 'weights' (int8 weights, float activations) or 'int8' (int8 "
        "weights and activations, calibrated on --calibration_data; the LRN layers stay float)",
    )
    parser.add_argument(
        "--calibration_data",
        help="--quantize int8: a records folder whose images calibrate the activations' ranges",
    )
    parser.add_argument(
        "--version", type=int, help="version number to write (default: highest present + 1)"
    )
    parser.add_argument(
        "--labels",
        help="class names, one per line (default: the class "
        "names of the data the model was trained on, found through the run "
        "folder's run.json; else those the model carries, as imported "
        "ImageNet weights do; else the class indices)",
    )
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=SERVING_MAX_PIXELS,
        help="refuse images with more pixels than this, read from the image "
        "header before decoding (default: %(default)s)",
    )
    parser.add_argument(
        "--model_name",
        help="model name in the warmup requests (default: the export base's folder name)",
    )
    return parser.parse_args(argv)


@command(OSError)
def main(argv=None):
    args = parse_args(argv)
    if args.output is None and (args.quantize or args.calibration_data):
        raise UsageError("--quantize and --calibration_data are for --output (a LiteRT file)")
    if args.output is not None and (args.version is not None or args.model_name):
        raise UsageError("--version and --model_name are for --export_base (a SavedModel)")
    import_tensorflow_quietly()
    from alexnet_keras import portable, serving

    if args.output is not None:  # before loading the model: its mistakes answer at once
        portable.format_of(args.output, args.quantize, args.calibration_data)
    model_path = pathlib.Path(args.model)
    model = load_model(model_path)
    num_classes = model.output.shape[-1]
    labels = serving.labels_for_model(model_path, args.labels, model=model)
    if labels is None:
        print(
            f"no class names found for {model_path} (pass --labels): the labels are the "
            f"class indices"
        )
        labels = [str(index) for index in range(num_classes)]
    elif len(labels) != num_classes:
        raise UsageError(
            f"{len(labels)} labels{' in ' + args.labels if args.labels else ''} but "
            f"{model_path} predicts {num_classes} classes"
        )
    if args.output is not None:
        with rerun_keeps(f"nothing was written under {args.output}: free space and export again"):
            description = portable.write_portable(
                model, args.output, labels, args.quantize, args.calibration_data
            )
        print(f"exported {model_path} to {args.output}: {description}")
        return 0
    with rerun_keeps(
        f"the versions already in {args.export_base} are untouched and this export left "
        f"nothing behind: free space and export again"
    ):
        path = serving.export_model(
            model,
            args.export_base,
            labels,
            version=args.version,
            max_pixels=args.max_pixels,
            model_name=args.model_name,
            source=model_path,
        )
    print(f"exported {model_path} ({num_classes} classes) to {path}")
    return 0


def load_model(model_path):
    """The Keras model of a .keras file; UsageError when there is none."""
    import zipfile

    import keras

    if not model_path.is_file():
        raise UsageError(f"--model {model_path} does not exist")
    try:
        model = keras.models.load_model(model_path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise UsageError(f"--model {model_path} is not a .keras model file: {error}") from None
    if len(model.outputs) != 1 or len(model.output.shape) != 2:
        raise UsageError(f"--model {model_path} does not answer one vector of class scores")
    return model


if __name__ == "__main__":
    sys.exit(main())
