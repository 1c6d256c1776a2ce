"""What `predict.py` writes: the rows (JSON lines or CSV) through a journal that a rerun
resumes, fc7 features in shards with their index, and Grad-CAM pictures; every file appears
whole or not at all."""

import csv
import fcntl
import json
import os
import pathlib
import re
import shutil

import numpy as np

from alexnet_keras.prediction_inputs import RECORD_SEPARATOR, without_scheme
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import replaced_atomically


class RowsOutput:
    """OUT.jsonl or OUT.csv. Rows go to a journal beside it (`.OUT.partial`, JSON lines)
    as each batch is answered; a rerun after a kill reads it back and answers only the
    images without a row; the finished file appears under its name in one rename. A
    finished output is never overwritten unless asked."""

    FORMATS = (".jsonl", ".csv")

    def __init__(self, path, settings, overwrite=False):
        self.path = pathlib.Path(path)
        if self.path.suffix.lower() not in self.FORMATS:
            raise UsageError(f"--output {self.path} must end in .jsonl or .csv")
        if self.path.exists() and not overwrite:
            raise UsageError(
                f"{self.path} exists: a finished output is not overwritten "
                f"(remove it, choose another --output, or pass --overwrite)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal_path = self.path.with_name(f".{self.path.name}.partial")
        self.settings_path = self.path.with_name(f".{self.path.name}.partial.json")
        self._journal = open(self.journal_path, "a+b")
        try:
            fcntl.flock(self._journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._journal.close()
            raise UsageError(f"another prediction is writing {self.path} now") from None
        self.rows_done, self.answered_paths, self.resumed = self._resume(settings)

    def _resume(self, settings):
        """Reads the journal a killed run left: its complete rows stay, a row cut by the
        kill goes. -> (paths with a row, paths of the answered rows in order, resumed)."""
        previous = (
            json.loads(self.settings_path.read_text()) if self.settings_path.exists() else None
        )
        self._journal.seek(0, 2)
        if previous is not None and previous != settings and self._journal.tell():
            raise UsageError(
                f"{self.journal_path} holds the rows of an unfinished run with other settings "
                f"({_differences(previous, settings)}): rerun it as it was to finish it, or "
                f"remove {self.journal_path} to start again"
            )
        done, answered, complete = set(), [], 0  # `complete`: bytes of whole rows
        self._journal.seek(0)
        for line in self._journal:  # one row at a time: the journal may hold millions
            if not line.endswith(b"\n"):
                break  # cut by the kill
            row = json.loads(line)
            done.add(row["path"])
            if row["error"] is None:
                answered.append(row["path"])
            complete += len(line)
        self._journal.truncate(complete)
        self._journal.seek(0, 2)
        self.settings_path.write_text(json.dumps(settings, indent=2))
        return done, answered, bool(done)

    def add(self, rows):
        self._journal.write(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
        self._journal.flush()
        self.rows_done.update(row["path"] for row in rows)
        self.answered_paths += [row["path"] for row in rows if row["error"] is None]

    def rows(self):
        """Every row written so far, in order, read back from the journal."""
        self._journal.seek(0)
        for line in self._journal:
            yield json.loads(line)
        self._journal.seek(0, 2)

    def finish(self, top_k):
        """Publishes the output under its name: the journal itself for JSON lines, or the
        same rows as CSV."""
        os.fsync(self._journal.fileno())
        if self.path.suffix.lower() == ".csv":
            with replaced_atomically(self.path) as temporary:
                with open(temporary, "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(csv_header(top_k))
                    writer.writerows(csv_row(row, top_k) for row in self.rows())
                    handle.flush()
                    os.fsync(handle.fileno())
            self.journal_path.unlink()
        else:
            os.replace(self.journal_path, self.path)
        self.settings_path.unlink(missing_ok=True)
        self.close()

    def close(self):
        self._journal.close()


def _differences(previous, settings):
    keys = sorted(
        key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key)
    )
    return ", ".join(f"{key} {previous.get(key)} then {settings.get(key)}" for key in keys)


def csv_header(top_k):
    """The CSV columns: path, true_label, error, then label_1, score_1, ... label_k, score_k."""
    return ["path", "true_label", "error"] + [
        name for rank in range(1, top_k + 1) for name in (f"label_{rank}", f"score_{rank}")
    ]


def csv_row(row, top_k):
    ranked = [value for pair in zip(row["labels"], row["scores"]) for value in pair]
    ranked += [""] * (2 * top_k - len(ranked))
    return [row["path"], row["true_label"] or "", row["error"] or ""] + ranked


FEATURES_PER_SHARD = 10_000  # 160 MB of fc7 a shard at full width
FEATURES_INDEX = "index.csv"


def features_shard_name(index):
    return f"features-{index:05d}.npy"


class FeatureShards:
    """fc7 of every answered image: `features-NNNNN.npy` (float32, FEATURES_PER_SHARD rows
    each) and `index.csv` (path, file, row). A shard is filled as raw float32 rows in a
    hidden file and becomes its `.npy` in one rename when full or at the end; a rerun
    keeps the rows of the images the journal has answered."""

    def __init__(self, folder, width, answered, overwrite=False):
        self.folder = pathlib.Path(folder)
        self.width = int(width)
        if (self.folder / FEATURES_INDEX).exists() and not overwrite:
            raise UsageError(
                f"{self.folder} holds the features of a finished run: remove it, "
                f"choose another --features_dir, or pass --overwrite"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = answered
        shard, kept = divmod(answered, FEATURES_PER_SHARD)
        for index in range(shard):
            if not (self.folder / features_shard_name(index)).exists():
                raise UsageError(
                    f"{self.folder / features_shard_name(index)} is missing: "
                    f"remove the unfinished output to start again"
                )
            self._partial(index).unlink(missing_ok=True)  # killed between rename and unlink
        partial, row_bytes = self._partial(shard), self.width * 4
        final = self.folder / features_shard_name(shard)
        if final.exists():  # published by a run killed before its journal caught up
            rows = np.load(final, mmap_mode="r")[:kept]
            partial.write_bytes(np.ascontiguousarray(rows, np.float32).tobytes())
            final.unlink()
        for later in self.folder.glob("*features-*.npy*"):  # beyond the journal's rows
            if int(re.search(r"features-(\d+)", later.name)[1]) > shard:
                later.unlink()
        if kept and (not partial.exists() or partial.stat().st_size < kept * row_bytes):
            raise UsageError(
                f"{self.folder} holds fewer features than the rows answered: "
                f"remove the unfinished output to start again"
            )
        with open(partial, "ab") as handle:
            handle.truncate(kept * row_bytes)  # rows written after the journal's last go

    def _partial(self, shard):
        return self.folder / f".{features_shard_name(shard)}.partial"

    def add(self, features):
        features = np.ascontiguousarray(features, np.float32)
        while len(features):
            shard, filled = divmod(self.rows, FEATURES_PER_SHARD)
            part = features[: FEATURES_PER_SHARD - filled]
            with open(self._partial(shard), "ab") as handle:
                handle.write(part.tobytes())
            self.rows += len(part)
            features = features[len(part) :]
            if self.rows % FEATURES_PER_SHARD == 0:
                self._publish(shard, FEATURES_PER_SHARD)

    def _publish(self, shard, rows):
        partial = self._partial(shard)
        with replaced_atomically(self.folder / features_shard_name(shard)) as temporary:
            with open(temporary, "wb") as output, open(partial, "rb") as raw:
                np.lib.format.write_array_header_1_0(
                    output,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                        "fortran_order": False,
                        "shape": (rows, self.width),
                    },
                )
                shutil.copyfileobj(raw, output, 1 << 24)
        partial.unlink()

    def finish(self, answered_paths):
        shard, filled = divmod(self.rows, FEATURES_PER_SHARD)
        if filled or self.rows == 0:
            self._publish(shard, filled)
        with replaced_atomically(self.folder / FEATURES_INDEX) as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "file", "row"])
                for row, path in enumerate(answered_paths):
                    file_index, within = divmod(row, FEATURES_PER_SHARD)
                    writer.writerow([path, features_shard_name(file_index), within])


def explanation_path(folder, path):
    """Where the heatmap of the image at `path` goes: its path under `folder`, made relative
    (no scheme, no leading /, no ..), with .png added."""
    relative = without_scheme(path).replace(RECORD_SEPARATOR, "/")
    parts = [part for part in relative.split("/") if part not in ("", ".", "..")]
    return pathlib.Path(folder, *parts).with_name(parts[-1] + ".png")
