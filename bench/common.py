"""Helpers shared by the benchmark scripts."""

import json
import os
import statistics
import sys
import time

# The benchmarks run from a checkout: make `alexnet_keras` importable without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# As the project's commands run TensorFlow (alexnet_keras_base.quiet.import_tensorflow_quietly):
# its BFC allocator on the CPU. Read at TensorFlow's first allocation, so importing this
# module before any op is enough; bench/allocator_speed.py compares both allocators.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

# The network of every script's --smoke run: the tests' tiny variant.
SMOKE_WIDTH = 0.125
SMOKE_CLASSES = 10


def parse_args(parser, argv, smoke):
    """The script's arguments from `argv` (None: the command line). `--smoke` replaces the
    sizes by those of `smoke` (a tiny network, a few images and rounds): the whole script
    runs in seconds through the same code, to show that it runs; its figures mean nothing.
    Sizes that are no flag of the script are `parser.set_defaults` of it."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes ("
        + ", ".join(f"{name} {value}" for name, value in smoke.items())
        + "): checks in seconds that the script runs",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


SYNTHETIC_CLASSES = 10  # of synthetic_records


def synthetic_records(folder, images_per_class, num_shards):
    """Converts synthetic images (SYNTHETIC_CLASSES classes) into TFRecords under `folder`;
    returns the records folder and its dataset.json."""
    from alexnet_keras import input_pipeline
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    make_synthetic_dataset(
        folder / "images", num_classes=SYNTHETIC_CLASSES, images_per_class=images_per_class
    )
    convert(
        folder / "images",
        folder / "records",
        ConvertOptions(num_shards=num_shards),
        log=lambda m: None,
    )
    return folder / "records", input_pipeline.load_dataset_info(folder / "records")


def training_batch(batch_size, num_classes=1000, seed=0):
    """A random batch as the training step takes it: ((uint8 crops, per-image RGB lighting
    shifts), int32 labels)."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(seed)
    pixels = tf.cast(generator.uniform((batch_size, 227, 227, 3), 0, 256, dtype=tf.int32), tf.uint8)
    rgb_shift = generator.normal((batch_size, 3), stddev=2.0)
    labels = generator.uniform((batch_size,), 0, num_classes, dtype=tf.int32)
    return (pixels, rgb_shift), labels


def cpu_name():
    """The CPU's model name (Linux), to print beside every figure."""
    import pathlib

    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def print_results(results):
    """One aligned line per figure, then the whole dict as JSON for scripts."""
    for key, value in results.items():
        print(f"{key:45s} {value:.3f}" if isinstance(value, float) else f"{key:45s} {value}")
    print(json.dumps(results))


def set_threads(intra_op, inter_op):
    """TensorFlow's thread pools, before it starts: `intra_op` threads inside one op (the
    convolutions and matmuls), `inter_op` ops running side by side. Where TensorFlow runs
    already with other pools (bench/smoke.py runs several scripts in one process), says so
    on stderr and keeps them."""
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(intra_op)
        threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # "cannot be modified after initialization"
        print(
            f"note: TensorFlow runs already in this process, with "
            f"{threading.get_intra_op_parallelism_threads()} intra-op and "
            f"{threading.get_inter_op_parallelism_threads()} inter-op threads (0: its "
            f"default); {intra_op} and {inter_op} are not set",
            file=sys.stderr,
        )


def call_times(function, repeats):
    """Seconds of each of `repeats` timed calls, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(function, repeats):
    """Median of `repeats` timed calls, after one untimed warm-up call."""
    return statistics.median(call_times(function, repeats))


def alternate(functions, rounds):
    """Times the named functions alternately, one call each per round, the order reversed
    every other round, after one untimed call each (tracing, compiling), so that a shared
    machine's drift falls on all of them. Returns the median seconds of each, and for every
    function but the first the median of the per-round ratios its time / the first's (above
    1: the first is faster)."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for round_index in range(rounds):
        for name in list(functions) if round_index % 2 == 0 else list(functions)[::-1]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    first = next(iter(functions))
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    ratios = {
        name: statistics.median(t / f for t, f in zip(seconds, times[first]))
        for name, seconds in times.items()
        if name != first
    }
    return medians, ratios
