"""Converts a folder of images into sharded TFRecords: `python data/build_tfrecords.py --help`.

The command lives in alexnet_keras_cli/build_tfrecords.py (also installed as `alexnet-build-tfrecords`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_keras_cli.build_tfrecords import main

if __name__ == "__main__":
    sys.exit(main())
