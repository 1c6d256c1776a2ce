"""Checks converted TFRecords with TensorFlow Data Validation (TFDV) before training, and new
batches of data for drift. Runs in the validation environment (TFDV 1.16 needs TensorFlow 2.16;
the project's environment has 2.21):

    V=.venv-validate/bin/python
    $V data/validate_data.py stats    --data_dir D                  # D/stats/train.pb, .html
    $V data/validate_data.py schema   --data_dir D                  # D/schema.pbtxt
    $V data/validate_data.py validate --data_dir D --split train
    $V data/validate_data.py validate --data_dir D                  # the validation split
    $V data/validate_data.py validate --data_dir D --records NEW/ --name batch_7   # new data

stats      Statistics of a split (or of --records) with semantic-domain (image) statistics:
           D/stats/NAME.pb, a Facets HTML view D/stats/NAME.html and a printed summary.
schema     Infers a schema from the training statistics (D/stats/train.pb) and curates it
           from labels.txt and the converter's contract (label in [0, classes - 1], the
           class names, 256x256 JPEG images, every feature required, a drift comparator on
           the label distribution).
           An existing D/schema.pbtxt is kept (edit it by hand) unless --force.
validate   Validates a split, or any TFRecords (--records), against D/schema.pbtxt and the
           label distribution against the --against split's statistics. Writes
           D/anomalies_NAME.pbtxt (TFDV's), D/validation_NAME.txt (printed too) and
           D/validation_NAME.json, which `train.py --require_validation` reads.

Exit status: 0 done / no anomaly, 1 anomalies found, 2 usage error, 5 the disk is full (every
file written is whole, old or new; validate's rerun reuses the statistics written).
Every other --flag is an Apache Beam pipeline option, so the same command runs on Dataflow,
Flink or Spark, e.g. --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
(README, "Validate the data"). Without one, Beam's DirectRunner runs here.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's foundation, alexnet_keras_base (standard library only), holds the on-disk layout and the
# report's contract; this environment does not install the project.
sys.path.insert(0, REPO_ROOT)

from alexnet_keras_base import validation_report as report_lib
from alexnet_keras_base.disk_full import rerun_keeps, writing
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import STORED_FORMAT, STORED_SIZE, DataDir, Feature
from alexnet_keras_base.quiet import beam_worker_logs_without_disk_full, import_tensorflow_quietly
from alexnet_keras_cli import command as run_command

DEFAULT_DRIFT_THRESHOLD = 0.1

# The converter's contract, from alexnet_keras_base, which (like the validation report there)
# imports no TensorFlow: this environment has its own.
LABEL, CLASS_TEXT, ENCODED = Feature.LABEL, Feature.CLASS_TEXT, Feature.ENCODED
HEIGHT, WIDTH, FORMAT, FILENAME = Feature.HEIGHT, Feature.WIDTH, Feature.FORMAT, Feature.FILENAME


def import_tfdv():
    """TFDV, without the notice its display module prints when IPython is missing (notebook
    views are not used here: the HTML is written to files)."""
    with contextlib.redirect_stderr(io.StringIO()):
        import tensorflow_data_validation as tfdv
    return tfdv


# === Records ===


def _glob(pattern):
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(pattern))


def find_records(data_dir, split=None, records=None, name=None, default_split="train"):
    """(name, file pattern, [{"file", "bytes"}]) of the records to read."""
    import tensorflow as tf

    if records and split:
        raise UsageError(
            "--split and --records exclude each other: --split reads "
            "D/SPLIT-*.tfrecord, --records any other files (name them with --name)"
        )
    if records:
        is_pattern = any(character in records for character in "*?[")
        pattern = records if is_pattern else os.path.join(records, "*.tfrecord*")
        if not name:
            if is_pattern:
                raise UsageError("--name is required when --records is a glob pattern")
            name = os.path.basename(os.path.normpath(records))
    else:
        name = split or default_split
        pattern = os.path.join(data_dir, DataDir.shard_glob(name))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"{name!r} cannot name report files: use letters, digits, '_', '.', '-'")
    if not tf.io.gfile.isdir(data_dir):
        raise UsageError(f"--data_dir {data_dir} does not exist or is not a folder")
    files = _glob(pattern)
    if not files:
        if records:
            raise UsageError(f"no TFRecord files match {pattern}")
        splits = sorted(
            {
                os.path.basename(path).split("-")[0]
                for path in _glob(os.path.join(data_dir, DataDir.shard_glob("*")))
            }
        )
        if not splits:
            raise UsageError(
                f"{data_dir} holds no TFRecord files: convert an image folder "
                f"into it with data/build_tfrecords.py first"
            )
        raise UsageError(
            f"{data_dir} has no {name!r} split (no {name}-*.tfrecord files); its "
            f"splits: {', '.join(splits)}"
        )
    described = [
        {"file": os.path.basename(path), "bytes": tf.io.gfile.stat(path).length} for path in files
    ]
    return name, pattern, described


def read_class_names(data_dir):
    import tensorflow as tf

    path = os.path.join(data_dir, DataDir.LABELS)
    if not tf.io.gfile.exists(path):
        raise UsageError(
            f"{path} is missing: is {data_dir} the output folder of data/build_tfrecords.py?"
        )
    with tf.io.gfile.GFile(path) as file:
        return [line.strip() for line in file.read().splitlines() if line.strip()]


# === Statistics ===


def _count_files(records):
    return f"{len(records)} file{'s' if len(records) != 1 else ''}"


def _stats_path(data_dir, name):
    return os.path.join(data_dir, DataDir.stats_name(name))


def stats_schema_hint():
    """What TFDV cannot guess from the values: the label is a category (so its statistics are
    class counts, which the drift comparator needs) and the encoded image is bytes."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    hint = schema_pb2.Schema()
    label = hint.feature.add(name=LABEL, type=schema_pb2.INT)
    label.int_domain.is_categorical = True
    encoded = hint.feature.add(name=ENCODED, type=schema_pb2.BYTES)
    encoded.image_domain.SetInParent()
    return hint


def beam_pipeline_options(flags):
    """Beam options from the flags this script does not know; a flag Beam does not know
    either is a usage error (Beam would only log and drop it)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(flags)
    known = options.get_all_options(retain_unknown_options=False)
    everything = options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(everything) - set(known))
    if unknown:
        raise UsageError(
            f"unknown flags: {', '.join('--' + flag for flag in unknown)} (neither "
            f"this command's nor Apache Beam pipeline options; see --help)"
        )
    return options


def compute_statistics(data_dir, name, pattern, records, beam_options):
    """Runs TFDV's Beam pipeline over `pattern`; writes D/stats/NAME.pb and NAME.json (the
    records it covers) and returns the statistics."""
    import tensorflow as tf

    tfdv = import_tfdv()

    print(f"computing statistics of {name}: {_count_files(records)} ({pattern})")
    options = tfdv.StatsOptions(enable_semantic_domain_stats=True, schema=stats_schema_hint())
    stats_dir = os.path.join(data_dir, DataDir.STATS)
    # The pipeline's own output must be reachable by remote workers: it goes beside the
    # final file (a gs:// folder on Dataflow), then becomes a plain binary proto.
    pipeline_output = os.path.join(stats_dir, f".{name}.stats-tfrecord")
    try:
        with writing(_stats_path(data_dir, name)), beam_worker_logs_without_disk_full():
            stats = tfdv.generate_statistics_from_tfrecord(
                pattern,
                output_path=pipeline_output,
                stats_options=options,
                pipeline_options=beam_options,
            )
    finally:
        # Beam's sink writes into beam-temp-NAME-UUID beside its output, left by a failed job.
        for path in _glob(f"{pipeline_output}*") + _glob(
            os.path.join(stats_dir, f"beam-temp-{os.path.basename(pipeline_output)}-*")
        ):
            (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
    # The sidecar says which records the statistics describe, and a rerun trusts the pair:
    # the old one goes first, so that a full disk between the two files leaves new
    # statistics without a sidecar (computed again), never beside the old one.
    sidecar_path = os.path.join(stats_dir, f"{name}.json")
    if tf.io.gfile.exists(sidecar_path):
        tf.io.gfile.remove(sidecar_path)
    write_atomically(_stats_path(data_dir, name), stats.SerializeToString())
    sidecar = {"pattern": pattern, "records": records}
    write_atomically(sidecar_path, json.dumps(sidecar, indent=2))
    return stats


def load_statistics(data_dir, name, hint):
    import tensorflow as tf

    tfdv = import_tfdv()

    path = _stats_path(data_dir, name)
    if not tf.io.gfile.exists(path):
        raise UsageError(
            f"no statistics of the {name} split ({path}): run `{report_lib.COMMAND} "
            f"stats --data_dir {data_dir} --split {name}` first{hint}"
        )
    return tfdv.load_stats_binary(path)


def reusable_statistics(data_dir, name, pattern, records):
    """The saved statistics of NAME if they cover exactly these records, else None."""
    import tensorflow as tf

    tfdv = import_tfdv()

    sidecar = os.path.join(data_dir, DataDir.stats_name(name, ".json"))
    if not (tf.io.gfile.exists(sidecar) and tf.io.gfile.exists(_stats_path(data_dir, name))):
        return None
    with tf.io.gfile.GFile(sidecar) as file:
        saved = json.loads(file.read())
    if saved != {"pattern": pattern, "records": records}:
        return None
    return tfdv.load_stats_binary(_stats_path(data_dir, name))


def write_statistics_html(path, stats, name, baseline=None, baseline_name=None):
    """TFDV's Facets view (it loads the Facets component from the web when opened)."""
    import_tfdv()
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    html = get_statistics_html(stats, baseline, lhs_name=name, rhs_name=baseline_name or "")
    write_atomically(
        path,
        f"<!doctype html><meta charset='utf-8'><title>TFDV statistics: {name}</title>"
        f"<h1>{name}</h1>\n{html}\n",
    )


def _feature(stats, name):
    for feature in stats.datasets[0].features:
        if feature.path.step and feature.path.step[0] == name:
            return feature
    return None


def summarize_statistics(stats, class_names=None):
    """A few lines a person reads first: examples, examples per class, image bytes."""
    dataset = stats.datasets[0]
    lines = [f"{dataset.num_examples} examples"]
    label = _feature(stats, LABEL)
    if label is not None and label.string_stats.rank_histogram.buckets:
        counts = {
            bucket.label: int(bucket.sample_count)
            for bucket in label.string_stats.rank_histogram.buckets
        }
        lines.append(f"{len(counts)} classes present; examples per class (label: count):")
        for value in sorted(counts, key=lambda value: int(value)):
            index = int(value)
            class_name = (
                class_names[index] if class_names and 0 <= index < len(class_names) else "?"
            )
            lines.append(f"  {value:>5} {class_name:24s} {counts[value]}")
    encoded = _feature(stats, ENCODED)
    if encoded is not None and encoded.HasField("bytes_stats"):
        sizes = encoded.bytes_stats
        lines.append(
            f"{ENCODED} bytes: min {sizes.min_num_bytes:.0f}, mean "
            f"{sizes.avg_num_bytes:.0f}, max {sizes.max_num_bytes:.0f}"
        )
    return "\n".join(lines)


# === Schema ===


def _drop_global_string_domain(schema, name):
    for domain in list(schema.string_domain):
        if domain.name == name:
            schema.string_domain.remove(domain)


def _feature_of(schema, name):
    for feature in schema.feature:
        if feature.name == name:
            return feature
    raise UsageError(
        f"the training statistics have no {name!r} feature: are these records "
        f"written by data/build_tfrecords.py?"
    )


def curate_schema(schema, class_names, drift_threshold=DEFAULT_DRIFT_THRESHOLD):
    """Tightens an inferred schema to what the converter promises. An inferred schema only
    knows the values it saw: it does not bound labels, and it would list every training
    file name as the only allowed file names."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    contract = {
        LABEL: schema_pb2.INT,
        CLASS_TEXT: schema_pb2.BYTES,
        ENCODED: schema_pb2.BYTES,
        HEIGHT: schema_pb2.INT,
        WIDTH: schema_pb2.INT,
        FORMAT: schema_pb2.BYTES,
        FILENAME: schema_pb2.BYTES,
    }
    for name, value_type in contract.items():
        feature = _feature_of(schema, name)
        feature.type = value_type
        feature.presence.min_fraction = 1.0  # required in every example
        feature.presence.min_count = 1
        feature.ClearField("domain_info")
        _drop_global_string_domain(schema, name)

    label = _feature_of(schema, LABEL)
    label.int_domain.CopyFrom(
        schema_pb2.IntDomain(min=0, max=len(class_names) - 1, is_categorical=True)
    )
    # Jensen-Shannon divergence sees a shift spread over many classes (ImageNet's 1000), which
    # L-infinity (the largest change of one class's share) misses; either can be set here.
    label.drift_comparator.jensen_shannon_divergence.threshold = drift_threshold
    _feature_of(schema, CLASS_TEXT).string_domain.value.extend(class_names)
    _feature_of(schema, ENCODED).image_domain.minimum_supported_image_fraction = 1.0
    for name in (HEIGHT, WIDTH):
        _feature_of(schema, name).int_domain.CopyFrom(
            schema_pb2.IntDomain(min=STORED_SIZE, max=STORED_SIZE)
        )
    _feature_of(schema, FORMAT).string_domain.value.append(STORED_FORMAT)
    return schema


def set_drift_threshold(schema, threshold):
    """Overrides the label's drift threshold for one run; 0 turns the drift check off."""
    comparator = _feature_of(schema, LABEL).drift_comparator
    if threshold == 0:
        comparator.Clear()
    elif comparator.HasField("infinity_norm"):
        comparator.infinity_norm.threshold = threshold
    else:
        comparator.jensen_shannon_divergence.threshold = threshold


# === Validation ===


def anomaly_rows(anomalies):
    """[{"feature", "kind", "description"}], one per reason TFDV gives."""
    rows = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = info.reason or [info]
        for reason in reasons:
            rows.append(
                {
                    "feature": feature,
                    "kind": reason.short_description,
                    "description": reason.description,
                }
            )
    if anomalies.HasField("dataset_anomaly_info"):
        for reason in anomalies.dataset_anomaly_info.reason:
            rows.append(
                {
                    "feature": "(dataset)",
                    "kind": reason.short_description,
                    "description": reason.description,
                }
            )
    return rows


def drift_lines(anomalies):
    lines = []
    for info in anomalies.drift_skew_info:
        for measurement in info.drift_measurements:
            kind = {1: "L-infinity", 2: "Jensen-Shannon", 3: "normalized absolute difference"}
            lines.append(
                f"{'/'.join(info.path.step)} drift "
                f"({kind.get(measurement.type, measurement.type)}): "
                f"{measurement.value:.4f}, threshold {measurement.threshold}"
            )
    return lines


def text_report(name, examples, records, rows, drift, schema_path, baseline_name):
    status = "PASSED" if not rows else f"FAILED: {len(rows)} anomalies"
    lines = [
        f"data validation of {name} ({examples} examples in {_count_files(records)}) against "
        f"{schema_path}"
        + (f", label drift against {baseline_name}" if baseline_name else "")
        + f": {status}"
    ]
    lines += [f"  {line}" for line in drift]
    if rows:
        width = max(len(row["feature"]) for row in rows)
        kind_width = max(len(row["kind"]) for row in rows)
        lines.append(f"  {'feature':{width}s}  {'kind':{kind_width}s}  description")
        for row in rows:
            lines.append(
                f"  {row['feature']:{width}s}  {row['kind']:{kind_width}s}  "
                f"{row['description'].strip()}"
            )
    return "\n".join(lines) + "\n"


# === Commands ===


def write_atomically(path, data):
    """Writes `data` (text or bytes) under a hidden name beside `path` and renames it into
    place, so that no reader (train.py --require_validation) sees half a file; a full disk is
    a DiskFull naming `path`, and leaves neither file."""
    import tensorflow as tf

    folder, base = os.path.split(path)
    temporary = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        with writing(path):
            with tf.io.gfile.GFile(temporary, "wb" if isinstance(data, bytes) else "w") as file:
                file.write(data)
            tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)


def command_stats(args, beam_options):
    name, pattern, records = find_records(
        args.data_dir, args.split, args.records, args.name, default_split="train"
    )
    stats = compute_statistics(args.data_dir, name, pattern, records, beam_options)
    html = os.path.join(args.data_dir, DataDir.stats_name(name, ".html"))
    write_statistics_html(html, stats, name)
    class_names = None
    try:
        class_names = read_class_names(args.data_dir)
    except UsageError:
        pass  # the summary then shows label numbers only
    print(summarize_statistics(stats, class_names))
    print(f"wrote {_stats_path(args.data_dir, name)} and {html}")
    return 0


def command_schema(args, beam_options):
    import tensorflow as tf
    from google.protobuf import text_format

    tfdv = import_tfdv()

    path = os.path.join(args.data_dir, DataDir.SCHEMA)
    if tf.io.gfile.exists(path) and not args.force:
        print(
            f"kept the existing schema {path} (it may be hand-edited); --force rebuilds it "
            f"from the training statistics"
        )
        return 0
    if not tf.io.gfile.isdir(args.data_dir):
        raise UsageError(f"--data_dir {args.data_dir} does not exist or is not a folder")
    class_names = read_class_names(args.data_dir)
    if not class_names:
        raise UsageError(f"{args.data_dir}/labels.txt lists no classes")
    stats = load_statistics(args.data_dir, "train", hint=" (the schema is inferred from them)")
    schema = curate_schema(tfdv.infer_schema(stats), class_names, args.drift_threshold)
    write_atomically(path, text_format.MessageToString(schema))  # tfdv.write_schema_text's
    print(
        f"wrote {path}: {len(schema.feature)} features, labels 0-{len(class_names) - 1} "
        f"({len(class_names)} classes), {STORED_SIZE}x{STORED_SIZE} {STORED_FORMAT} images, "
        f"label drift threshold {args.drift_threshold}. Edit it by hand if your data differs; "
        f"it is kept from now on."
    )
    return 0


def command_validate(args, beam_options):
    import tensorflow as tf
    from google.protobuf import text_format

    tfdv = import_tfdv()

    schema_path = os.path.join(args.data_dir, DataDir.SCHEMA)
    name, pattern, records = find_records(
        args.data_dir, args.split, args.records, args.name, default_split="validation"
    )
    if not tf.io.gfile.exists(schema_path):
        raise UsageError(
            f"no schema yet ({schema_path}): run `{report_lib.COMMAND} schema "
            f"--data_dir {args.data_dir}` first (after `stats`)"
        )
    schema = tfdv.load_schema_text(schema_path)
    if args.drift_threshold is not None:
        if args.drift_threshold < 0:
            raise UsageError(f"--drift_threshold must be >= 0, got {args.drift_threshold}")
        set_drift_threshold(schema, args.drift_threshold)
    baseline_name = args.against if args.against != name else None
    baseline = (
        load_statistics(args.data_dir, baseline_name, hint=" (the drift baseline)")
        if baseline_name
        else None
    )

    stats = reusable_statistics(args.data_dir, name, pattern, records)
    if stats is None:
        stats = compute_statistics(args.data_dir, name, pattern, records, beam_options)
    else:
        print(f"reusing {_stats_path(args.data_dir, name)} (computed from these same files)")
    anomalies = tfdv.validate_statistics(stats, schema, previous_statistics=baseline)

    rows = anomaly_rows(anomalies)
    examples = stats.datasets[0].num_examples
    report = text_report(
        name, examples, records, rows, drift_lines(anomalies), schema_path, baseline_name
    )
    anomalies_path = os.path.join(args.data_dir, f"anomalies_{name}.pbtxt")
    write_atomically(anomalies_path, text_format.MessageToString(anomalies))
    write_atomically(os.path.join(args.data_dir, DataDir.report_name(name, ".txt")), report)
    with tf.io.gfile.GFile(schema_path, "rb") as file:
        schema_sha256 = report_lib.sha256_of_bytes(file.read())
    contract = report_lib.build_report(
        name, records, schema_sha256, rows, examples, baseline=baseline_name
    )
    write_atomically(report_lib.report_path(args.data_dir, name), json.dumps(contract, indent=2))
    if baseline is not None:
        write_statistics_html(
            os.path.join(args.data_dir, DataDir.stats_name(f"{name}_vs_{baseline_name}", ".html")),
            stats,
            name,
            baseline,
            baseline_name,
        )
    print(report, end="")
    return 1 if rows else 0


# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="stats|schema|validate")

    def add_data_dir(subparser):
        subparser.add_argument(
            "--data_dir",
            required=True,
            help="output folder of data/build_tfrecords.py (local, or gs:// "
            "with a remote runner); statistics and reports go there",
        )

    def add_records(subparser, default_split):
        subparser.add_argument(
            "--split", help=f"reads DATA_DIR/SPLIT-*.tfrecord (default {default_split})"
        )
        subparser.add_argument(
            "--records",
            help="other TFRecords instead: a folder (its "
            "*.tfrecord* files) or a glob pattern, e.g. a new batch of data",
        )
        subparser.add_argument(
            "--name", help="names the outputs for --records (default: the folder's name)"
        )

    stats = commands.add_parser(
        "stats",
        help="statistics of a split",
        description="Statistics of a split: DATA_DIR/stats/NAME.pb, "
        "NAME.html (Facets) and a printed summary. Other --flags go to "
        "Apache Beam.",
    )
    add_data_dir(stats)
    add_records(stats, "train")

    schema = commands.add_parser(
        "schema",
        help="infer and curate DATA_DIR/schema.pbtxt",
        description="Infers a schema from DATA_DIR/stats/train.pb, "
        "curates it from the converter's contract and labels.txt, "
        "writes DATA_DIR/schema.pbtxt. An existing one is kept.",
    )
    add_data_dir(schema)
    schema.add_argument(
        "--force",
        action="store_true",
        help="rebuild and overwrite an existing (perhaps hand-edited) schema",
    )
    schema.add_argument(
        "--drift_threshold",
        type=float,
        default=DEFAULT_DRIFT_THRESHOLD,
        help="Jensen-Shannon divergence of the label distribution above which "
        "validate reports drift (default %(default)s)",
    )

    validate = commands.add_parser(
        "validate",
        help="validate a split or new records",
        description="Validates records against DATA_DIR/schema.pbtxt "
        "and their label distribution against --against's "
        "statistics. Exit 0 when clean, 1 on anomalies. Other "
        "--flags go to Apache Beam.",
    )
    add_data_dir(validate)
    add_records(validate, "validation")
    validate.add_argument(
        "--against",
        default="train",
        help="split whose statistics are the drift baseline (default train)",
    )
    validate.add_argument(
        "--drift_threshold",
        type=float,
        help="overrides the schema's label drift threshold for this run; "
        "0 turns the drift check off",
    )
    return parser.parse_known_args(argv)


@run_command()
def main(argv=None):
    args, beam_flags = parse_args(argv)
    # Beam's note that python-snappy (a faster checksum) is not installed.
    logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)
    # Keep the output for the report: Google Cloud libraries' Python-version notices and
    # TensorFlow's deprecation notices about TFDV's own calls are not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    command = {"stats": command_stats, "schema": command_schema, "validate": command_validate}
    if args.command == "schema" and beam_flags:
        raise UsageError(f"unknown arguments: {' '.join(beam_flags)} (see --help)")
    # Checked before any work: a mistyped flag must not be dropped silently.
    beam_options = beam_pipeline_options(beam_flags) if args.command != "schema" else None
    # This environment's TensorFlow logs CUDA plugin clashes and a missing TensorRT as it
    # starts: dropped as the other commands drop TensorFlow's start-up chatter.
    import_tensorflow_quietly(find_devices=False)
    with rerun_keeps(
        f"the files in {args.data_dir} are whole, old or new (validate reuses the statistics "
        f"written): free space and run the same command again"
    ):
        return command[args.command](args, beam_options)


if __name__ == "__main__":
    sys.exit(main())
