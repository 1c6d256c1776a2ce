"""The errors that end a command with a message instead of a traceback.

The library raises them on purpose, with a message that says what happened and what to do;
`alexnet_keras_cli.command` prints the message and exits with the error's `exit_code`. Any
other exception is a bug, and keeps its traceback. Standard library only: the validation
environment raises them too.
"""

import pathlib
import shutil


class CommandError(Exception):
    """The base: a message for the user, and the command's exit status."""

    exit_code = 1
    prefix = "error: "


class UsageError(CommandError, ValueError):
    """Something the user can fix: a bad flag, file, folder, image or request. A ValueError
    too, for callers of the library that catch those."""

    exit_code = 2


class TrainingDiverged(CommandError):
    """The loss or the weights became NaN, infinite or absurd; nothing was saved."""

    exit_code = 3


class WorkerDied(CommandError):
    """A decoding process of the converter died (killed, out of memory)."""

    exit_code = 1


class Preempted(CommandError):
    """SIGTERM arrived and a checkpoint was saved: rerunning resumes. 128 + SIGTERM, which
    job controllers retry."""

    exit_code = 143
    prefix = ""


class PeerLost(CommandError):
    """Another worker of a multi-worker run vanished (killed, out of memory, lost machine).
    Retryable, as 143, for controllers that restart 128-255 (Kubeflow's restartPolicy
    ExitCode), and above 128 + the highest signal number (64), so that it is not read as
    "killed by a signal"."""

    exit_code = 200


class DiskFull(CommandError):
    """A write found no space left on its file system (alexnet_keras_base.disk_full
    recognises it). Permanent for a job controller, as a restart meets the same full disk: 5,
    below 128. The message names the file, what it needed when known, the space free once the
    command's temporaries are gone, and what a rerun keeps (`keeps`, filled in by the code
    that knows it). `quota`: the user's disk quota is used up (EDQUOT), not the disk; the
    disk's free space then says nothing and is left out."""

    exit_code = 5

    def __init__(self, path, needed_bytes=None, keeps=None, quota=False):
        super().__init__(path)
        self.path, self.needed_bytes, self.keeps = path, needed_bytes, keeps
        self.quota = quota

    def __str__(self):
        # Built when printed, after the command removed its temporaries: the free space is
        # what a rerun finds.
        sizes = []
        if self.needed_bytes:
            sizes.append(f"it needs about {_megabytes(self.needed_bytes)}")
        free = _free_bytes(self.path) if self.path and not self.quota else None
        if free is not None:
            sizes.append(f"{_megabytes(free)} free there")
        full = "your disk quota is used up" if self.quota else "the disk is full"
        return (
            f"{full}: no space left writing {self.path or 'the output'}"
            + (f" ({', '.join(sizes)})" if sizes else "")
            + f"; {self.keeps or 'free space and run the command again'}"
        )


def _megabytes(count):
    return f"{count / 1e6:.1f} MB"


def _free_bytes(path):
    """The space free on the file system that holds `path` (or its nearest existing
    folder); None when it cannot be asked."""
    folder = pathlib.Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
