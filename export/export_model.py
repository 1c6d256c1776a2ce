"""Exports a trained model as a versioned SavedModel for TensorFlow Serving: `python export/export_model.py --help`.

The command lives in alexnet_keras_cli/export_model.py (also installed as `alexnet-export`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_keras_cli.export_model import main

if __name__ == "__main__":
    sys.exit(main())
