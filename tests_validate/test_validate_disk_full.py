"""data/validate_data.py on a full disk (a tmpfs of the test's own, tests/full_disk.py): the
statistics' Beam pipeline, whose worker's error Beam wraps in its own, and the report files
each end with one `error:` line naming the file, status 5, no traceback and no log line about
the disk; no temporary and no half-written file is left, what was there stays whole, and a
rerun with room reuses the statistics that were written."""

import subprocess
import sys

from conftest import REPO_ROOT

# tests/full_disk.py: standard library, pytest and the foundation (as data/validate_data.py).
sys.path += [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from full_disk import (
    assert_disk_full,
    disk,  # noqa: F401 (a fixture)
    fill,
    snapshot,
)

KEEPS = "are whole, old or new"


def run(validate_data, capfd, *arguments):
    status = validate_data.main([str(argument) for argument in arguments])
    captured = capfd.readouterr()
    return subprocess.CompletedProcess(arguments, status, captured.out, captured.err)


def everything(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_validation_on_a_full_disk_keeps_every_file_whole(
    profiled_records,
    disk,  # noqa: F811
    validate_data,
    capfd,
    caplog,
):
    folder = disk / "records"
    subprocess.run(["cp", "-r", profiled_records, folder], check=True)
    before, earlier = everything(folder), snapshot(folder)

    # The validation split's statistics: TFDV's pipeline fails writing them.
    filler = fill(disk, 0)
    result = run(validate_data, capfd, "validate", "--data_dir", folder)
    assert_disk_full(result, folder / "stats" / "validation.pb", KEEPS)
    assert not [record for record in caplog.records if record.levelno >= 30], caplog.text
    assert "No space left" not in result.stderr.replace(result.stderr.splitlines()[-1], "")
    assert everything(folder) == before and snapshot(folder) == earlier

    # With the statistics written, the report: no file of it half-written.
    filler.unlink()
    result = run(validate_data, capfd, "stats", "--data_dir", folder, "--split", "validation")
    assert result.returncode == 0, result.stderr[-3000:]
    filler = fill(disk, 0)
    before, earlier = everything(folder), snapshot(folder)
    result = run(validate_data, capfd, "validate", "--data_dir", folder)
    assert_disk_full(result, folder / "anomalies_validation.pbtxt", KEEPS)
    assert everything(folder) == before and snapshot(folder) == earlier

    filler.unlink()
    result = run(validate_data, capfd, "validate", "--data_dir", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" in result.stdout and "PASSED" in result.stdout
