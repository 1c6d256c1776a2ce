"""What the Beam job writes besides its rows' transforms: fc7's shards (`WriteFeatureShards`),
the output of an earlier run (refused, or with --overwrite removed once the new one is
whole), and a full disk met by a worker, which Beam reports wrapped in an error of its own
(`JobOutputs.disk_full_reported`)."""

import contextlib
import io
import os
import pathlib
import re
import shutil
import uuid

import numpy as np

from alexnet_keras import prediction_inputs, prediction_outputs
from alexnet_keras_base.disk_full import as_disk_full, is_disk_full
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.quiet import beam_imported_quietly, beam_worker_logs_without_disk_full

with beam_imported_quietly():
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

# The job's steps that write, as build() names them; Beam's error names the step that failed
# ("... [while running 'Write/Write/WriteImpl/WriteBundles']").
WRITE_ROWS, WRITE_FEATURES, WRITE_INDEX = "Write", "Feature shards", "Write index"
_FAILED_STEP = re.compile(r"\[while running '([^'/]+)")
FEATURE_SHARDS = "features-*.npy"
# Beam's file sinks write into a folder beside their output, `beam-temp-NAME-UUID` (a uuid1's
# 32 hex digits), and rename its files into place when the job ends. Spelled out digit by
# digit, so that another output's (`NAME-val`'s) never matches.
_BEAM_TEMPORARY = "beam-temp-{}-" + "[0-9a-f]" * 32
# The rows' shards, PREFIX-SSSSS-of-NNNNN.SUFFIX (SHARD_TEMPLATE), digit by digit likewise.
_SHARD = "-" + "[0-9]" * 5 + "-of-" + "[0-9]" * 5


class WriteFeatureShards(beam.DoFn):
    """fc7 of answered images -> `features-<unique>.npy` shards (float32, at most
    FEATURES_PER_SHARD rows, one or more per bundle), each written under a hidden name and
    renamed when whole; yields the index rows (path, file, row). A retried bundle writes new
    shards and its rows replace the failed attempt's, so the index names each path once
    (a failed attempt's shard can stay behind, unlisted). A full disk removes the hidden
    file and names the shard."""

    def __init__(self, folder):
        self._folder = str(folder)

    def start_bundle(self):
        self._paths, self._features = [], []

    def process(self, answer):
        row, fc7 = answer
        self._paths.append(row["path"])
        self._features.append(fc7)
        if len(self._paths) == prediction_outputs.FEATURES_PER_SHARD:
            yield from self._write()

    def finish_bundle(self):
        for index_row in self._write():
            yield beam.transforms.window.GlobalWindows.windowed_value(index_row)

    def _write(self):
        if not self._paths:
            return
        name = f"features-{uuid.uuid4().hex[:16]}.npy"
        buffer = io.BytesIO()
        np.save(buffer, np.stack(self._features).astype(np.float32))
        temporary = prediction_inputs.join_path(self._folder, f".{name}.partial")
        shard = prediction_inputs.join_path(self._folder, name)
        try:
            with FileSystems.create(temporary) as handle:
                handle.write(buffer.getvalue())
        except OSError as error:
            with contextlib.suppress(OSError):  # Beam's BeamIOError is one
                FileSystems.delete([temporary])
            if is_disk_full(error) and error.errno:  # the shard's name, in the text Beam passes on
                raise OSError(error.errno, os.strerror(error.errno), shard) from error
            raise
        FileSystems.rename([temporary], [shard])
        paths, self._paths, self._features = self._paths, [], []
        for row, path in enumerate(paths):
            yield path, name, row


class JobOutputs:
    """The files one job writes: its rows' shards (`PREFIX-SSSSS-of-NNNNN.SUFFIX`), and with
    a features folder its fc7 shards and index."""

    def __init__(self, output, prefix, suffix, features_dir=None):
        self.output, self.prefix, self.suffix = output, prefix, suffix
        self.features_dir = features_dir
        self.index = (
            prediction_inputs.join_path(features_dir, prediction_outputs.FEATURES_INDEX)
            if features_dir
            else None
        )

    def _finished(self):
        """{path: (size, time)} of the finished output there: the rows' shards, and the
        features when their index is there."""
        patterns = [f"{self.prefix}{_SHARD}{self.suffix}"]
        if self.index and FileSystems.exists(self.index):
            patterns += [self.index, prediction_inputs.join_path(self.features_dir, FEATURE_SHARDS)]
        return {
            metadata.path: (metadata.size_in_bytes, metadata.last_updated_in_seconds)
            for result in FileSystems.match(patterns)
            for metadata in result.metadata_list
        }

    def earlier(self, overwrite):
        """The finished output of an earlier run, which is never overwritten unless asked, as
        in the local command. -> what `remove_replaced` removes once this run is whole."""
        earlier = self._finished()
        if earlier and not overwrite:
            raise UsageError(
                f"{next(iter(earlier))} exists: a finished output is not overwritten (remove "
                f"it, choose another --output or --features_dir, or pass --overwrite)"
            )
        return earlier

    def remove_replaced(self, earlier):
        """After the job: the earlier run's files that this one did not write over (its
        shards of another count, its fc7 shards), so that only the new output is left."""
        now = self._finished()
        old = [path for path, stamp in earlier.items() if now.get(path) == stamp]
        if old:
            FileSystems.delete(old)

    def _temporaries(self):
        """Beam's temporary folders of this output and index, and the fc7 shards and their
        hidden files; local paths only (an object store does not fill)."""
        found = set()
        for target in (self.prefix, self.index):
            if target and not prediction_inputs.is_remote(target):
                target = pathlib.Path(target)
                found.update(target.parent.glob(_BEAM_TEMPORARY.format(target.name)))
        if self.features_dir and not prediction_inputs.is_remote(self.features_dir):
            folder = pathlib.Path(self.features_dir)
            found.update(folder.glob(FEATURE_SHARDS), folder.glob(f".{FEATURE_SHARDS}.partial"))
        return found

    @contextlib.contextmanager
    def disk_full_reported(self, earlier):
        """Around the job: a full disk that a worker met (wrapped in Beam's error, also from
        a remote worker) becomes one DiskFull naming the file its step wrote, after this
        run's temporaries and fc7 shards are removed; Beam's log of the failed bundle, a
        traceback, is held back."""
        before = self._temporaries()
        try:
            with beam_worker_logs_without_disk_full():
                yield
        except Exception as error:
            if not is_disk_full(error):
                raise
            for path in self._temporaries() - before:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            full = as_disk_full(error)
            step = _FAILED_STEP.search(str(error))
            written = {WRITE_FEATURES: self.features_dir, WRITE_INDEX: self.index}
            full.path = full.path or written.get(step and step[1]) or self.output
            full.keeps = (
                "a Beam job keeps no part of its output and a rerun answers every image"
                + (" (the earlier output is as it was)" if earlier else "")
                + ": free space and run the same command again"
            )
            raise full from error
