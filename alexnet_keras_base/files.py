"""Writing files so that a reader never sees one half-written, and telling the temporary
files of a killed process from those of a running one."""

import contextlib
import os
import pathlib

from alexnet_keras_base.disk_full import writing


@contextlib.contextmanager
def replaced_atomically(path, needed_bytes=None):
    """Yields a temporary path beside `path`, with the same extension (Keras and matplotlib
    infer the format from it); renames it to `path` when the block ends without error, and
    removes it when the block fails. A full disk becomes DiskFull naming `path` (and
    `needed_bytes`, its expected size, when the caller knows it)."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with writing(path, needed_bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path, text):
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def process_alive(pid):
    """Whether process `pid` exists, so its temporary files may still be written; a pid
    that cannot be asked about counts as alive, so that nothing in use is removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
