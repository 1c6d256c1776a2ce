"""matplotlib without a display: its non-interactive backend, and figures saved whole or not
at all."""

from alexnet_keras_base.files import replaced_atomically


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi):
    """Saves `figure` to `path` (the format from its extension) atomically, then closes it."""
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    pyplot().close(figure)
