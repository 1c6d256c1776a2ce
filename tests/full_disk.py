"""A full disk, made for real, for the tests of every writing command (tests/ and
tests_validate/, so standard library and pytest only): a small tmpfs mounted by the test,
filled with a file that leaves the space a command should run out of; what a command must
end with then."""

import os
import pathlib
import shutil
import subprocess

import pytest

from alexnet_keras_base.errors import DiskFull

PAGE = 4096  # tmpfs allocates whole pages
TEMPORARY_NAMES = (".tmp-", "_temp")  # files.replaced_atomically's, the export's, TensorFlow's


@pytest.fixture
def disk(tmp_path):
    """A 64 MB tmpfs of the test's own, unmounted at the end."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(
            f"a full disk is made on a tmpfs, and mounting one needs root (CAP_SYS_ADMIN): "
            f"{mounted.stderr.strip()}"
        )
    yield folder
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
        # A file still open (a failed test's traceback holds its writer): detach it now.
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(disk, leave):
    """Fills `disk` but `leave` bytes; delete the returned file to free it."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - (leave + PAGE - 1) // PAGE * PAGE
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def temporaries(folder):
    return [
        path
        for path in pathlib.Path(folder).rglob("*")
        if any(marker in path.name for marker in TEMPORARY_NAMES)
    ]


def assert_disk_full(result, written, keeps):
    """One `error:` line naming `written` and what a rerun `keeps`, status 5, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == DiskFull.exit_code == 5, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: the disk is full: no space left writing "), errors
    assert str(written) in errors[0] and keeps in errors[0], errors
    assert "Traceback" not in result.stderr
    return errors[0]


def snapshot(folder):
    return {
        path.relative_to(folder): path.read_bytes()
        for path in sorted(pathlib.Path(folder).rglob("*"))
        if path.is_file()
    }
