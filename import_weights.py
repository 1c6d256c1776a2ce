"""Imports Caffe's published bvlc_alexnet ImageNet weights as a .keras model:
`python import_weights.py --help`.

The command lives in alexnet_keras_cli/import_weights.py (also installed as
`alexnet-import-weights`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alexnet_keras_cli.import_weights import main

if __name__ == "__main__":
    sys.exit(main())
