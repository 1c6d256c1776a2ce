"""The run's TensorBoard log, with a full disk reported: TensorFlow's summary writer fails
loudly only when it writes its first event. Later, its EventsWriter drops the status of each
record it could not write (`WriteRecord(...).IgnoreError()`), and the flush that follows finds
nothing left to write: the events file just stops growing, or ends in half a record. So after
each flush the file's new bytes are read back: whole records, as many as were written, or the
disk is full."""

import contextlib
import os
import pathlib
import shutil
import struct

import tensorflow as tf

from alexnet_keras_base.errors import DiskFull
from alexnet_keras_base.quiet import DISK_FULL_LOGS, native_stderr_without

# A TFRecord: the data's length (8 bytes, little-endian), its CRC (4), the data, its CRC (4).
_LENGTH = struct.Struct("<Q")
_CRC = 4
QUOTA_ROOM_BYTES = 1_000_000


class SummaryLog:
    """TensorFlow's summary writer on `logs_dir` (`.writer`), and its events file's size."""

    def __init__(self, logs_dir):
        logs_dir = pathlib.Path(logs_dir)
        before = set(self._events_files(logs_dir))
        # TensorFlow logs a failed first event on file descriptor 2 (several lines), before
        # the error that becomes the one DiskFull line.
        with native_stderr_without(DISK_FULL_LOGS):
            self.writer = tf.summary.create_file_writer(str(logs_dir))
        made = set(self._events_files(logs_dir)) - before
        # Exactly one, unless the folder is somewhere TensorFlow's file system is not local.
        self.path = made.pop() if len(made) == 1 else None
        self.size = self.path.stat().st_size if self.path else None

    @staticmethod
    def _events_files(logs_dir):
        # events.out.tfevents.{time}.{host}.{pid}.{counter}.v2
        return logs_dir.glob(f"events.out.tfevents.*.{os.getpid()}.*") if logs_dir.is_dir() else ()

    @contextlib.contextmanager
    def writing(self, tags, step=None):
        """The block writes one summary under each of `tags` at `step` (or at the step its
        own calls give); flushed when it ends, and DiskFull if they did not all reach the
        file."""
        with (
            native_stderr_without(DISK_FULL_LOGS),
            self.writer.as_default(step=step),  # flushes when the block ends
        ):
            yield self.writer
        if self.path is None:
            return
        with open(self.path, "rb") as events:
            events.seek(self.size)
            written = events.read()
        if _whole_records(written) < len(tags):
            # The writer's error, dropped, would have said which; a disk with room left
            # (a megabyte) cut the record through its quota.
            free = shutil.disk_usage(self.path.parent).free
            raise DiskFull(self.path, quota=free > QUOTA_ROOM_BYTES)
        self.size += len(written)


def _whole_records(data):
    """How many records `data` holds, if it ends with a whole one; -1 if it does not."""
    offset = records = 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size + _CRC + length + _CRC
        records += 1
    return records if offset == len(data) else -1
