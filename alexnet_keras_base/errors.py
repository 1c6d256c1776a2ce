"""The errors that end a command with a message instead of a traceback.

The library raises them on purpose, with a message that says what happened and what to do;
`alexnet_keras_cli.command` prints the message and exits with the error's `exit_code`. Any
other exception is a bug, and keeps its traceback. Standard library only: the validation
environment raises them too.
"""


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
