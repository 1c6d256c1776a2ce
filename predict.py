"""Answers a collection of images with a trained, imported or exported model:
`python predict.py --help`.

The command lives in alexnet_keras_cli/predict.py (also installed as `alexnet-predict`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alexnet_keras_cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
