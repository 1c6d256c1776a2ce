"""Helpers shared by the benchmark scripts."""

import json
import os
import sys

# The benchmarks run from a checkout: make `alexnet_keras` importable without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def print_results(results):
    """One aligned line per figure, then the whole dict as JSON for scripts."""
    for key, value in results.items():
        print(f"{key:45s} {value:.3f}" if isinstance(value, float) else f"{key:45s} {value}")
    print(json.dumps(results))
