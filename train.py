"""Trains AlexNet on TFRecords made by data/build_tfrecords.py: `python train.py --help`.

The command lives in alexnet_keras_cli/train.py (also installed as `alexnet-train`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alexnet_keras_cli.train import build_demo_dataset, main, parse_args, resolve  # noqa: F401  (re-exported: `import train`)

if __name__ == "__main__":
    sys.exit(main())
