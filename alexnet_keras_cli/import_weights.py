"""Imports Caffe's published ImageNet weights of bvlc_alexnet as a .keras model of ours.

    python import_weights.py --weights bvlc_alexnet.caffemodel --output bvlc_alexnet.keras \
        --class_names synset_words.txt

--weights is Caffe's bvlc_alexnet.caffemodel (either of Caffe's two encodings) or
caffe-tensorflow's bvlc_alexnet.npy; the kind is read from the file, not its name. What the
file says is checked against bvlc_alexnet layer by layer (kernels, strides, pads, groups, LRN
constants, max pooling 3/2, layer order, every blob's shape); anything else is refused with
the layer and the difference, and nothing is written. The .npy file is a pickle: it is read
by an unpickler that builds numpy arrays and nothing else, so it never runs code.

The model takes RGB pixels in [0, 255] at 227x227 like every model of ours (the mean is
subtracted inside it), so evaluate.py, export/export_model.py and train.py --init_from use
it as they use a trained one. It has Caffe's LRN constants (local_size 5, alpha 1e-4 divided
by the window, k 1) and records Caffe's 0.1 biases for fine-tuning. --class_names (ILSVRC's
synset_words.txt, one line per output) travel inside the .keras file and label the answers
of its exports.
"""

import argparse
import math
import sys
import time

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command


def _bgr_mean(text):
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers B,G,R, got {text!r}") from None
    if len(values) != 3 or not all(0.0 <= value <= 255.0 for value in values):
        raise argparse.ArgumentTypeError(f"expected three numbers B,G,R in [0, 255], got {text!r}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="bvlc_alexnet.caffemodel (Caffe's model zoo) or bvlc_alexnet.npy (caffe-tensorflow)",
    )
    parser.add_argument("--output", required=True, help="the .keras file to write")
    means = parser.add_mutually_exclusive_group()
    means.add_argument(
        "--mean",
        type=_bgr_mean,
        help="per-channel mean B,G,R on the 0-255 scale (default: ILSVRC-2012's, "
        "the average of Caffe's ilsvrc_2012_mean.npy)",
    )
    means.add_argument(
        "--mean_file",
        help="Caffe's mean as .npy (e.g. ilsvrc_2012_mean.npy, read without "
        "pickle) or .binaryproto; a per-pixel mean is averaged per channel",
    )
    parser.add_argument(
        "--class_names",
        help="class names, one line per output in order (ILSVRC's "
        "synset_words.txt); saved inside the model",
    )
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"--output must end with .keras, got {args.output!r}")
    return args


@command(OSError)
def main(argv=None):
    args = parse_args(argv)
    import_tensorflow_quietly()
    from alexnet_keras import caffe_weights, means_and_names

    start = time.perf_counter()
    bgr_mean = args.mean or caffe_weights.ILSVRC_2012_BGR_MEAN
    if args.mean_file:
        bgr_mean = means_and_names.read_mean_file(args.mean_file)
    class_names = None
    if args.class_names:
        class_names = means_and_names.read_class_names(args.class_names, caffe_weights.NUM_CLASSES)
    try:
        source, model = caffe_weights.import_weights(
            args.weights, args.output, bgr_mean, class_names
        )
    except (UsageError, OSError) as error:  # named after the file it is about
        raise UsageError(f"{args.weights}: {error}") from None
    weights = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    print(
        f"imported {args.weights} ({source}, {weights:,} weights) to "
        f"{args.output} in {time.perf_counter() - start:.1f} s"
    )
    print(
        f"mean B,G,R: {', '.join(f'{value:.8g}' for value in bgr_mean)}; class names: "
        f"{args.class_names or 'none (exports will label answers with the class indices)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
