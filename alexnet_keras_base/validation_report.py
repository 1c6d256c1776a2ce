"""The data-validation report: written by data/validate_data.py, read by train.py.

Standard library only. TensorFlow Data Validation lives in its own environment (it needs
TensorFlow 2.16), so training never imports it: the JSON report it leaves beside the records
is the contract. It lives in `alexnet_keras_base`, which both environments import without
TensorFlow.
"""

import hashlib
import json
import os

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import SPLITS, DataDir

COMMAND = ".venv-validate/bin/python data/validate_data.py"


def report_path(data_dir, name):
    return os.path.join(str(data_dir), DataDir.report_name(name))


def sha256_of_bytes(data):
    return hashlib.sha256(data).hexdigest()


def build_report(name, records, schema_sha256, anomalies, examples, baseline=None):
    """The report's contents. `records`: [{"file": basename, "bytes": size}] validated;
    `anomalies`: [{"feature", "kind", "description"}]."""
    return {
        "name": name,
        "passed": not anomalies,
        "examples": examples,
        "records": sorted(records, key=lambda record: record["file"]),
        "schema_sha256": schema_sha256,
        "drift_baseline": baseline,
        "anomalies": anomalies,
    }


def _local_records(data_dir, split):
    import glob

    paths = sorted(glob.glob(os.path.join(str(data_dir), DataDir.shard_glob(split))))
    return [{"file": os.path.basename(path), "bytes": os.path.getsize(path)} for path in paths]


def _rerun(data_dir, split):
    return f"`{COMMAND} validate --data_dir {data_dir} --split {split}`"


def check_validated(data_dir, splits=SPLITS):
    """Raises UsageError unless every split in `splits` has a passing report that
    covers the records now in `data_dir` (same files, same sizes) and the current schema."""
    schema_path = os.path.join(str(data_dir), DataDir.SCHEMA)
    for split in splits:
        path = report_path(data_dir, split)
        if not os.path.exists(path):
            raise UsageError(
                f"--require_validation: {data_dir} has no data validation report for the "
                f"{split} split ({os.path.basename(path)}). Validate it in the validation "
                f"environment: `{COMMAND} stats --data_dir {data_dir}`, then `{COMMAND} schema "
                f"--data_dir {data_dir}`, then {_rerun(data_dir, split)}"
            )
        try:
            report = json.loads(open(path, encoding="utf-8").read())
            passed, anomalies = report["passed"], report["anomalies"]
            records, schema_sha256 = report["records"], report["schema_sha256"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"--require_validation: {path} is not a validation report written by "
                f"data/validate_data.py; run {_rerun(data_dir, split)}"
            ) from None
        if not passed:
            first = anomalies[0] if anomalies else {"feature": "?", "kind": "?"}
            raise UsageError(
                f"--require_validation: the latest validation of the {split} split found "
                f"{len(anomalies)} anomalies (first: {first['feature']}: {first['kind']}); "
                f"see {os.path.join(str(data_dir), DataDir.report_name(split, '.txt'))}. Fix the data "
                f"or the schema ({schema_path}), then run {_rerun(data_dir, split)}"
            )
        if records != _local_records(data_dir, split):
            raise UsageError(
                f"--require_validation: the {split} records in {data_dir} changed after they "
                f"were validated; run {_rerun(data_dir, split)}"
            )
        current_schema = (
            sha256_of_bytes(open(schema_path, "rb").read()) if os.path.exists(schema_path) else None
        )
        if current_schema != schema_sha256:
            raise UsageError(
                f"--require_validation: {schema_path} changed (or was removed) after the "
                f"{split} split was validated; run {_rerun(data_dir, split)}"
            )
