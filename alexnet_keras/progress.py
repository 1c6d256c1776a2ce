"""The progress bar of a loop: the caller's `progress(total, description)` makes it (tqdm's
interface), or nothing shows one."""

import contextlib


class _NoBar:
    """Stands for the bar when the caller asked for none."""

    def update(self, count=1):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def progress_bar(progress, total, description):
    """Yields `progress(total, description)`'s bar, or one that does nothing when `progress`
    is None; closes it when the block ends, also on an error."""
    bar = progress(total, description) if progress else _NoBar()
    try:
        yield bar
    finally:
        bar.close()
