"""Answers image files through an export and prints each one's top-5 labels and scores: the
short form of `predict.py --model EXPORT`, kept for the commands written for it.

    python export/predict.py --export exports/alexnet cat.jpg dog.png

For a whole collection (folders, records folders; rows in a file, resumable, fc7 features):
`python predict.py --help` (docs/prediction.md).
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_keras_cli.predict import main as predict_main


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument(
        "--export",
        required=True,
        help="an export version folder, or the base folder of its versions",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = os.path.join(folder, "rows.jsonl")
        status = predict_main(
            ["--model", args.export, "--output", rows, "--no_progress", *args.images]
        )
        if os.path.exists(rows):
            with open(rows) as handle:
                for row in map(json.loads, handle):
                    print(f"{row['path']}:")
                    for label, score in zip(row["labels"], row["scores"]):
                        print(f"  {score:7.2%}  {label}")
                    if row["error"]:
                        print(f"  error: {row['error']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
