"""SIGTERM as a flag that a long loop checks between steps, so that it stops where it can
resume (training after a checkpoint, prediction after a batch of rows)."""

import signal


class SigtermFlag:
    """Turns SIGTERM into `raised`, for the duration of the `with` block."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)
