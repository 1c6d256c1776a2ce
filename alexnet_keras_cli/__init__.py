"""The command-line entry points of alexnet-keras: `train.py`, `evaluate.py`, `predict.py`,
`data/build_tfrecords.py`, `data/make_synthetic.py`, `export/export_model.py` and
`import_weights.py` in a checkout, and the console scripts `alexnet-train`,
`alexnet-evaluate`, `alexnet-predict`, `alexnet-build-tfrecords`, `alexnet-make-synthetic`,
`alexnet-export` and `alexnet-import-weights` of an installed package call the same `main`.

Each module parses its arguments before importing TensorFlow, so `--help` and usage errors
answer at once; nothing here imports TensorFlow or `alexnet_keras` at import time. What must
import without TensorFlow (the config, the folders on disk, the errors, atomic writes, the
quiet start-up) is the foundation, `alexnet_keras_base`, which the library imports too; this
package holds the commands only, and `command`, which turns their errors into a message and
an exit status.
"""

import functools
import sys

from alexnet_keras_base.disk_full import as_disk_full, is_disk_full
from alexnet_keras_base.errors import CommandError


def command(*also):
    """Decorates a command's `main(argv) -> status`: a CommandError (alexnet_keras_base.errors)
    is printed without a traceback and its exit_code returned; so is an error of the types in
    `also` (e.g. OSError for a command whose output could not be written), with status 2.
    A full disk, in any of its forms, is a DiskFull (status 5) even where the code that
    wrote did not say so. Anything else is a bug and keeps its traceback."""

    def decorate(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except Exception as error:
                if is_disk_full(error):
                    error = as_disk_full(error)
                if isinstance(error, CommandError):
                    print(f"{error.prefix}{error}", file=sys.stderr)
                    return error.exit_code
                if isinstance(error, also):
                    print(f"error: {error}", file=sys.stderr)
                    return 2
                raise

        return run

    return decorate


def progress_bar_factory(unit, enabled=True, file=None):
    """A function (total, description) -> tqdm bar on `file` (standard error), or None when
    disabled or when it is not a terminal (logs get no bars)."""
    file = file or sys.stderr
    if not enabled or not file.isatty():
        return None
    from tqdm import tqdm

    def progress(total, description):
        return tqdm(total=total, desc=description, unit=unit, file=file, leave=False)

    return progress
