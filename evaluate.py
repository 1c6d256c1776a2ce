"""Evaluates a trained or exported model (top-1 / top-5 error, report folder):
`python evaluate.py --help`.

The command lives in alexnet_keras_cli/evaluate.py (also installed as `alexnet-evaluate`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from alexnet_keras_cli.evaluate import main, parse_args  # noqa: F401  (re-exported: `import evaluate`)

if __name__ == "__main__":
    sys.exit(main())
