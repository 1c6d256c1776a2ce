"""Time and peak memory of import_weights.py on full-size bvlc_alexnet files of our own
making (random weights, 60,965,224 of them: the size of the published files).

    python bench/import_weights_memory.py              # the three formats, one run each
    python bench/import_weights_memory.py --rounds 3   # the median of three
    python bench/import_weights_memory.py --smoke      # seconds: that it runs

For each format (.caffemodel current encoding, legacy V1 encoding, caffe-tensorflow .npy),
writes the file with tests/caffe_files.py, then runs `import_weights.py` in a fresh process and
reads its peak resident memory (the kernel's ru_maxrss of that child). The same is measured
for a process that only starts what the command starts before reading the file (TensorFlow,
Keras, alexnet_keras): the import's own cost is the difference. Both are reported as
multiples of the file's size.
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from common import (  # also makes alexnet_keras importable
    SMOKE_CLASSES,
    SMOKE_WIDTH,
    cpu_name,
    parse_args,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from caffe_files import random_weights, write_caffemodel, write_npy

FORMATS = {"caffemodel (layer)": "layer", "caffemodel (V1 layers)": "layers", "npy": "npy"}
# --smoke's child: import_weights.py's main, the library's call made at the tiny width (the
# command takes bvlc_alexnet's full size only, files of 0.24 GB).
SMOKE_COMMAND = (
    "import functools, sys; from alexnet_keras import caffe_weights; "
    "caffe_weights.import_weights = functools.partial(caffe_weights.import_weights, "
    "width_multiplier={width_multiplier}, num_classes={num_classes}); "
    "from alexnet_keras_cli import import_weights; sys.exit(import_weights.main(sys.argv[1:]))"
)
BASELINE = (
    "from alexnet_keras_base.quiet import import_tensorflow_quietly; "
    "import_tensorflow_quietly(); import keras, alexnet_keras; "
    "from alexnet_keras import caffe_weights"
)


def measure(command):
    """(wall seconds, peak RSS bytes, stdout) of `command` in a child process: the
    kernel's ru_maxrss of that child alone (wait4), not of all children so far."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode:
            raise RuntimeError(f"{command} failed:\n{stderr.read().decode()[-3000:]}")
        return seconds, usage.ru_maxrss * 1024, stdout.read().decode()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs per format (median)")
    parser.add_argument(
        "--work_dir",
        help="where to write the files (default: a temporary folder; needs about 0.5 GB)",
    )
    parser.set_defaults(width_multiplier=1.0, num_classes=1000, formats=list(FORMATS))
    args = parse_args(
        parser,
        argv,
        smoke=dict(
            width_multiplier=SMOKE_WIDTH,
            num_classes=SMOKE_CLASSES,
            formats=["caffemodel (layer)"],
        ),
    )
    command = [sys.executable, "import_weights.py"]
    if args.smoke:
        command = [sys.executable, "-c", SMOKE_COMMAND.format(**vars(args))]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores")
    weights = random_weights(args.width_multiplier, args.num_classes, seed=0)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        folder = pathlib.Path(folder)
        baseline = statistics.median(
            measure([sys.executable, "-c", BASELINE])[1] for _ in range(args.rounds)
        )
        print(f"TensorFlow + Keras + alexnet_keras alone: peak RSS {baseline / 1e6:.0f} MB")
        print(
            f"{'format':24s}{'file MB':>9s}{'import s':>10s}{'command s':>11s}"
            f"{'peak MB':>9s}{'peak/file':>11s}{'(peak-TF)/file':>16s}"
        )
        for label in args.formats:
            kind = FORMATS[label]
            path = folder / ("bvlc_alexnet.npy" if kind == "npy" else f"{kind}.caffemodel")
            if kind == "npy":
                write_npy(path, weights)
            else:
                write_caffemodel(path, weights, kind)
            size = path.stat().st_size
            runs = []
            for _ in range(args.rounds):
                output = folder / "out.keras"
                seconds, peak, stdout = measure(
                    [
                        *command,
                        "--weights",
                        str(path),
                        "--output",
                        str(output),
                    ]
                )
                own = float(re.search(r" in ([0-9.]+) s\n", stdout).group(1))
                runs.append((own, seconds, peak))
                output.unlink()
            own, seconds, peak = (statistics.median(values) for values in zip(*runs))
            print(
                f"{label:24s}{size / 1e6:9.1f}{own:10.1f}{seconds:11.1f}{peak / 1e6:9.0f}"
                f"{peak / size:11.2f}{(peak - baseline) / size:16.2f}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
