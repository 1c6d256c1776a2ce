"""Every benchmark script's `--smoke` run, one after the other in this one process (TensorFlow
starts once): that each script runs end to end, on a tiny network with a few images and
rounds. Its figures mean nothing; tests/test_bench.py runs this.

    python bench/smoke.py                           # every script this environment runs
    python bench/smoke.py lrn_gradient_speed train_speed

Each script is imported as a module and its `main(["--smoke"])` called. A script that fails
(an exception, or an exit status other than 0) has its traceback printed on stdout, and the
next one runs. The last line is JSON, {script: seconds, or null where it failed}; the exit status is
1 when a script failed.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: F401  (puts the checkout on sys.path, sets the CPU allocator)

BENCH = pathlib.Path(__file__).resolve().parent
NOT_SCRIPTS = {"common", "smoke"}
# Scripts that need a Python of another environment, which this one cannot import.
OTHER_ENVIRONMENTS = {
    "torch_peer": ".venv-peer",
    "peer_speed": ".venv-peer",
    "validate_speed": ".venv-validate",
}


def script_names():
    """Every benchmark script in bench/, by module name."""
    return sorted(path.stem for path in BENCH.glob("*.py") if path.stem not in NOT_SCRIPTS)


def two_logical_cpus():
    """Two logical CPU devices, as bench/train_speed.py sets them at its import: it must be
    done before TensorFlow starts, and an earlier script would start it."""
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


def run(name):
    """Seconds of `name`'s --smoke run, or None if it failed (its traceback printed)."""
    print(f"=== {name} --smoke", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        status = importlib.import_module(name).main(["--smoke"])
    except SystemExit as exit:
        status = exit.code
    except Exception:
        traceback.print_exc(file=sys.stdout)  # in the script's part of the output
        status = "an exception"
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    sys.stdout.flush()
    if status not in (None, 0):
        print(f"=== {name} --smoke failed ({status}) after {seconds:.1f} s", flush=True)
        return None
    print(f"=== {name} --smoke ran in {seconds:.1f} s ({cpu_seconds:.1f} s CPU)", flush=True)
    return round(seconds, 2)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scripts",
        nargs="*",
        help="module names of bench/ scripts (default: all but "
        + ", ".join(f"{name} ({folder})" for name, folder in OTHER_ENVIRONMENTS.items())
        + ")",
    )
    args = parser.parse_args(argv)
    names = args.scripts or [name for name in script_names() if name not in OTHER_ENVIRONMENTS]
    unknown = sorted(set(names) - set(script_names()))
    if unknown:
        parser.error(f"no such script in {BENCH.name}/: {', '.join(unknown)}")
    two_logical_cpus()
    results = {name: run(name) for name in names}
    print(json.dumps(results))
    return 0 if all(seconds is not None for seconds in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
