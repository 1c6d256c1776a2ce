"""The commands' `main(argv)` run in the test process, for the tests of their messages and
exit statuses: a Python process with TensorFlow costs seconds to start, and these tests start
dozens. Every script also runs as a process of its own in some test (its output, its exit
status, kill -9, SIGTERM)."""

import contextlib
import io
import os
import subprocess


def run_main(main, *arguments):
    """Runs a command's `main(argv)` in this process as its script runs it: returns a
    CompletedProcess with the exit status and what the command printed. For the tests of a
    command's messages; each script also runs as a process of its own in some test."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main([str(argument) for argument in arguments])
        except SystemExit as exit_:  # argparse's usage errors, sys.exit
            status = exit_.code
            if status is None:
                status = 0
            elif not isinstance(status, int):  # sys.exit("message"): printed, status 1
                print(status, file=stderr)
                status = 1
    return subprocess.CompletedProcess(arguments, status, stdout.getvalue(), stderr.getvalue())


def start_script(python, repo_root, script, *arguments, env=None):
    """`script` (a path from the checkout's root) as a process of its own, with `env` added
    to this one's and its output discarded: for the tests that kill it on the way."""
    return subprocess.Popen(
        [python, script, *map(str, arguments)],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
