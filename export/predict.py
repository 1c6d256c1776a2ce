"""Answers image files through an export's `serving_default` signature, in this process: the
same graph TF Serving runs, without a server. Prints the top-5 labels and scores per image.

    python export/predict.py --export exports/alexnet cat.jpg dog.png

--export is a version folder (exports/alexnet/3) or a model's base folder, whose highest
version is used.
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument("--export", required=True,
                        help="an export version folder, or the base folder of its versions")
    args = parser.parse_args(argv)

    from alexnet_keras_cli import import_tensorflow_quietly

    tf = import_tensorflow_quietly()

    from alexnet_keras import serving

    export = serving.export_version_dir(args.export)
    if export is None:
        print(f"error: {args.export} is neither an export nor a folder of export versions",
              file=sys.stderr)
        return 2
    missing = [path for path in args.images if not pathlib.Path(path).is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    serve = tf.saved_model.load(str(export)).signatures[serving.SERVING_DEFAULT]
    image_bytes = tf.constant([pathlib.Path(path).read_bytes() for path in args.images])
    try:
        outputs = serve(image_bytes=image_bytes)
    except tf.errors.InvalidArgumentError as error:
        print(f"error: the export refused the images: {error.message.splitlines()[0]}",
              file=sys.stderr)
        return 1
    print(f"answered by {export}, signature {serving.SERVING_DEFAULT}:")
    for path, labels, scores in zip(args.images, outputs["top_k_labels"].numpy(),
                                    outputs["top_k_scores"].numpy()):
        print(f"{path}:")
        for label, score in zip(labels, scores):
            print(f"  {score:7.2%}  {label.decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
