"""Writes the embedded default dataset of synthetic shapes: `python data/make_synthetic.py --help`.

The command lives in alexnet_keras_cli/make_synthetic.py (also installed as `alexnet-make-synthetic`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_keras_cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
