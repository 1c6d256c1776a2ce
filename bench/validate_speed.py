"""TFDV statistics speed against the floor of reading the same records, in one run.

    .venv-validate/bin/python bench/validate_speed.py [--data_dir datasets/synthetic/records]
    .venv-validate/bin/python bench/validate_speed.py --smoke --data_dir RECORDS  # that it runs

Runs in the validation environment (`make bench-validate` builds the demo records first).
Times on the same TFRecords: (1) a plain loop that reads every record and parses it into a
`tf.train.Example`, the least any statistics job must do; (2) `validate_data.py stats`'s
pipeline (TFDV with semantic-domain statistics) on Beam's DirectRunner, as the command runs it
by default, start-up included; (3) the same pipeline's marginal speed, from runs on the
validation split alone and on all records (start-up subtracted), the rate a large dataset
sees. Prints images/s and each TFDV figure as a ratio of the plain loop.
"""

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile
import time

from common import cpu_name, parse_args, print_results  # also puts the checkout on sys.path

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_validate_data():
    spec = importlib.util.spec_from_file_location(
        "validate_data", REPO_ROOT / "data" / "validate_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_all(files):
    import tensorflow as tf

    count = 0
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        tf.train.Example.FromString(record)
        count += 1
    return count


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_dir",
        default="datasets/synthetic/records",
        help="converted records (default: the demo's)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parse_args(parser, argv, smoke=dict(repeats=1))
    files = sorted(str(path) for path in pathlib.Path(args.data_dir).glob("*.tfrecord"))
    if not files:
        print(
            f"error: no TFRecords in {args.data_dir}: `make bench-validate` builds the demo "
            f"records",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    validate_data = load_validate_data()
    pattern = os.path.join(args.data_dir, "*.tfrecord")
    options = tfdv.StatsOptions(
        enable_semantic_domain_stats=True, schema=validate_data.stats_schema_hint()
    )
    parse_all(files[:1])  # warm the file cache and TensorFlow
    plain_seconds, images = min(timed(lambda: parse_all(files)) for _ in range(args.repeats))
    results = {
        "cpu": cpu_name(),
        "images": images,
        "plain_parse_loop_images_per_s": images / plain_seconds,
    }
    validation = os.path.join(args.data_dir, "validation-*.tfrecord")
    with tempfile.TemporaryDirectory() as scratch:

        def statistics(file_pattern):
            stats = tfdv.generate_statistics_from_tfrecord(
                file_pattern,
                output_path=os.path.join(scratch, "stats.tfrecord"),
                stats_options=options,
                pipeline_options=PipelineOptions([]),
            )
            return stats.datasets[0].num_examples

        seconds, counted = min(timed(lambda: statistics(pattern)) for _ in range(args.repeats))
        assert counted == images
        part_seconds, part = min(timed(lambda: statistics(validation)) for _ in range(args.repeats))
    plain = results["plain_parse_loop_images_per_s"]
    results["tfdv_direct_runner_images_per_s"] = images / seconds
    results["tfdv_direct_runner_ratio"] = images / seconds / plain
    marginal = (images - part) / (seconds - part_seconds)
    results["tfdv_direct_runner_startup_s"] = seconds - images / marginal
    results["tfdv_direct_runner_marginal_images_per_s"] = marginal
    results["tfdv_direct_runner_marginal_ratio"] = marginal / plain
    # The plain loop again, to show how much the machine drifted during the run.
    results["plain_parse_loop_images_per_s_after"] = images / timed(lambda: parse_all(files))[0]
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
