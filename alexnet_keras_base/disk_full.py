"""A full disk, recognised in one place, in each of the forms it takes (Python's OSError
ENOSPC, numpy's short write, TensorFlow's ResourceExhaustedError "No space left on device",
and either of them as the text of another error, as Apache Beam reports a worker's), and a
used-up disk quota in the same forms (EDQUOT, "Disk quota exceeded"),
and turned into `DiskFull`, which names the file being written. Standard library only: the
TensorFlow error is recognised by its class name and message, and TensorFlow's other
ResourceExhaustedError, out of memory, keeps its own meaning."""

import contextlib
import errno
import os
import pathlib
import re
import shutil

from alexnet_keras_base.errors import CommandError, DiskFull

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", also in TensorFlow's message
# numpy's ndarray.tofile (np.save to a path) reports a short write without an errno.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
QUOTA_USED_UP = os.strerror(errno.EDQUOT)  # "Disk quota exceeded"
# TensorFlow's file errors read "PATH; No space left on device" (or "; Disk quota exceeded").
_TENSORFLOW_PATH = re.compile(rf"(\S+); (?:{NO_SPACE}|{QUOTA_USED_UP})")
# Apache Beam wraps a worker's exception in one of its own (in this process a RuntimeError,
# "OSError: [Errno 28] No space left on device [while running 'STEP']"; from a remote worker
# the job's error, with the worker's traceback in its text): the wrapped error's own line, an
# exception's name and the OSError's errno and reason (and file, when it names one), or
# TensorFlow's ResourceExhaustedError and "PATH; reason", at the start of the text or of one
# of its lines, is what says that the disk is full; the phrase quoted elsewhere is not.
_WRAPPED = re.compile(
    rf"^(?:\w+\.)*\w+: \[Errno (?:{errno.ENOSPC}|{errno.EDQUOT})\] "
    rf"(?:{NO_SPACE}|{QUOTA_USED_UP})(?:: '([^']+)')?"
    rf"|^(?:\w+\.)*ResourceExhaustedError: [^\n]*?(\S+); (?:{NO_SPACE}|{QUOTA_USED_UP})"
    # Beam's BeamIOError of a batch of renames or deletes, its failures' reprs in its text.
    rf"|^(?:\w+\.)*BeamIOError: [^\n]*?\w+\((?:{errno.ENOSPC}|{errno.EDQUOT}), "
    rf"'(?:{NO_SPACE}|{QUOTA_USED_UP})'\)",
    re.MULTILINE,
)


def is_disk_full(error):
    """Whether `error` says that the disk is full."""
    if isinstance(error, DiskFull):
        return True
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)  # another errno: another failure
    # Beam's BeamIOError: a batch of file operations, each failure under its file's name.
    details = getattr(error, "exception_details", None)
    if isinstance(details, dict) and any(
        isinstance(failure, BaseException) and is_disk_full(failure) for failure in details.values()
    ):
        return True
    if isinstance(error, OSError) and _SHORT_WRITE.match(str(error)):
        return True
    if type(error).__name__ == "ResourceExhaustedError":
        return NO_SPACE in str(error) or QUOTA_USED_UP in str(error)
    # A message of ours that quotes a full disk says something else on purpose.
    return not isinstance(error, CommandError) and bool(_WRAPPED.search(str(error)))


def _is_quota(error):
    if isinstance(error, OSError) and isinstance(error.errno, int):
        return error.errno == errno.EDQUOT
    return QUOTA_USED_UP in str(error)


def as_disk_full(error, path=None, needed_bytes=None):
    """The DiskFull for a disk-full `error`, naming `path` or, without it, the file that
    the error names."""
    if isinstance(error, DiskFull):
        return error
    if path is None:
        path = getattr(error, "filename", None)
        found = _TENSORFLOW_PATH.search(str(error))
        wrapped = _WRAPPED.search(str(error))
        path = path or (found[1] if found else None) or (wrapped and (wrapped[1] or wrapped[2]))
    return DiskFull(path, needed_bytes, quota=_is_quota(error))


@contextlib.contextmanager
def writing(path, needed_bytes=None):
    """Turns a full disk in the block, which writes `path`, into DiskFull naming it (a
    DiskFull from inside the block, naming its own file, passes as it is)."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error) or isinstance(error, DiskFull):
            raise
        raise as_disk_full(error, path, needed_bytes) from error


@contextlib.contextmanager
def rerun_keeps(keeps):
    """Adds what a rerun keeps (a sentence, or a function that returns it when the disk
    filled) to a DiskFull that the block raises without one."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        full = as_disk_full(error)
        if full.keeps is None:
            full.keeps = keeps() if callable(keeps) else keeps
        if full is error:
            raise
        raise full from error


@contextlib.contextmanager
def new_entries_removed_on_disk_full(folder):
    """Removes what the block added to `folder` when the disk fills: TensorFlow's checkpoint
    writer leaves its `ckpt-N_temp` folder and half-written files behind."""
    folder = pathlib.Path(folder)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        yield
    except Exception as error:
        if is_disk_full(error) and folder.is_dir():
            for entry in set(folder.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise
