"""Writes the embedded default dataset: procedurally drawn shapes and textures.

    python data/make_synthetic.py --output_dir datasets/synthetic/images

An ImageFolder (OUT/<class>/<class>_NNNN.jpg) of ten classes (circle, square, triangle, star,
cross, ring, stripes, checkerboard, crescent, dots) with random colours, positions, sizes,
rotations, image sizes, backgrounds, blur and noise. Deterministic from --seed. Convert it
with data/build_tfrecords.py; train.py without --data_dir does both.
"""

import argparse
import sys
import time

from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command


@command()
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="folder to write the classes into")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=10,
        help="number of classes, the first in the list of shapes (default 10)",
    )
    parser.add_argument(
        "--classes",
        type=lambda text: text.split(","),
        help="comma-separated class names to write instead of the first "
        "--num_classes (e.g. circle,stripes)",
    )
    parser.add_argument(
        "--images_per_class", type=int, default=150, help="images per class (default 150)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    import_tensorflow_quietly(find_devices=False)
    from alexnet_keras.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    count = make_synthetic_dataset(
        args.output_dir, args.num_classes, args.images_per_class, args.seed, classes=args.classes
    )
    classes = len(args.classes) if args.classes else args.num_classes
    print(
        f"wrote {count} images of {classes} classes to {args.output_dir} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
