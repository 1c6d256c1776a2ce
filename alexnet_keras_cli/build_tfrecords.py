"""Converts a folder of images into sharded TFRecords for training and validation.

    python data/build_tfrecords.py --input_dir IN --output_dir OUT

IN is laid out as torchvision's ImageFolder: IN/train/<class>/*.jpg with an optional
IN/val/<class>/*.jpg, or IN/<class>/*.jpg. Without val/, --val_fraction of each class is held
out (seeded). ImageNet's validation images, all in one flat IN/val/ folder, need their labels:
--val_labels LOC_val_solution.csv (Kaggle), or a file with one synset per line in sorted file
order; the devkit's ILSVRC2012_validation_ground_truth.txt (class indices in the devkit's own
order) also needs --val_label_synsets, the synsets in that order, one per line. Each image is decoded (EXIF orientation applied, converted to RGB), its shorter
side rescaled to 256 and the central 256x256 kept, as in the paper, then re-encoded as JPEG.

Writes OUT/train-NNNNN-of-NNNNN.tfrecord, OUT/validation-..., OUT/labels.txt and
OUT/dataset.json (counts, skipped files with reasons, RGB mean/std and the eigenpairs of the
RGB covariance for the PCA lighting noise). Bad files are skipped and reported, never fatal.
A killed run is completed by running the same command again; a shard is rebuilt when any of
its files changed (size or modification time), its settings, or the input folder.

Several machines: run the same command with --num_partitions P --partition_index K on each
(K = 0..P-1), gather all output files in one folder, then run the command once more without
the partition flags: it finds every shard complete and writes dataset.json.
"""

import argparse
import dataclasses
import os
import sys
import time

from alexnet_keras_base.config import CONVERTER_MAX_PIXELS
from alexnet_keras_base.disk_full import rerun_keeps
from alexnet_keras_base.quiet import import_tensorflow_quietly
from alexnet_keras_cli import command, progress_bar_factory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input_dir", required=True, help="folder of class folders (see above)")
    parser.add_argument("--output_dir", required=True, help="where shards and dataset.json go")
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.05,
        help="share of each class held out when IN has no val/ (default 0.05)",
    )
    parser.add_argument(
        "--num_shards",
        type=int,
        default=None,
        help="training shards (default: one per 1024 images, at least 4); "
        "validation gets a proportional number",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="decoding processes (default: all cores, %(default)s here)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the validation hold-out and the shuffling (default 0)",
    )
    parser.add_argument(
        "--jpeg_quality",
        type=int,
        default=95,
        help="quality of the re-encoded JPEGs, 1-100 (default 95)",
    )
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=CONVERTER_MAX_PIXELS,
        help="larger images are refused as decompression bombs (default %(default)s)",
    )
    parser.add_argument(
        "--val_labels",
        metavar="FILE",
        help="labels of a flat IN/val/ folder: LOC_val_solution.csv, or one "
        "synset (or devkit class index) per line in sorted file order",
    )
    parser.add_argument(
        "--val_label_synsets",
        metavar="FILE",
        help="with a --val_labels file of class indices: line k is the synset "
        "of index k (the devkit's order)",
    )
    parser.add_argument(
        "--class_names",
        metavar="FILE",
        help="readable class names, lines 'synset name' (the devkit's words.txt, "
        "Kaggle's LOC_synset_mapping.txt), for evaluation reports and "
        "exports; labels.txt keeps the folder names",
    )
    parser.add_argument(
        "--num_partitions",
        type=int,
        default=1,
        help="split the shards among this many machines (default 1)",
    )
    parser.add_argument(
        "--partition_index",
        type=int,
        default=0,
        help="which partition this machine converts, 0-based (default 0)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@command()
def main(argv=None):
    args = parse_args(argv)
    # The converter decodes with Pillow in worker processes forked before any TensorFlow
    # op runs; TensorFlow is imported (quietly) only for the TFRecord writer.
    import_tensorflow_quietly(find_devices=False)
    from alexnet_keras.tfrecords import ConvertOptions, convert

    progress = progress_bar_factory("img", enabled=not args.no_progress)
    start = time.perf_counter()
    # The flags are the options' fields (--class_names sets class_names_file).
    options = ConvertOptions(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(ConvertOptions)
            if field.name != "class_names_file"
        },
        class_names_file=args.class_names,
    )
    with rerun_keeps(
        f"the finished shards in {args.output_dir} are kept and a rerun reuses them: free "
        f"space and run the same command again"
    ):
        dataset = convert(args.input_dir, args.output_dir, options, progress=progress)
    if dataset is None:
        return 0
    seconds = time.perf_counter() - start
    skipped = dataset["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} files:", file=sys.stderr)
        for entry in skipped[:20]:
            print(f"  {entry['file']}: {entry['reason']}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more, listed in dataset.json", file=sys.stderr)
    counts = dataset["num_examples"]
    print(
        f"wrote {counts['train']} training and {counts['validation']} validation images of "
        f"{dataset['num_classes']} classes to {args.output_dir} in {seconds:.1f} s; "
        f"skipped {len(skipped)}, ignored {dataset['ignored_files']} non-image files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
