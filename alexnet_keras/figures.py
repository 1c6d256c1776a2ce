"""The paper's Figures 3 and 4 for a trained model, as `evaluate.py --figures` writes them:
the conv1 kernels (kernel_figure.py) and the fc7 nearest neighbours (neighbour_figure.py, on
the training split's fc7 that feature_cache.py keeps on disk)."""

import pathlib

from alexnet_keras.evaluation import resolve_model_path
from alexnet_keras.feature_cache import FEATURES_FILE
from alexnet_keras.kernel_figure import KERNELS_FILE, write_kernel_figure
from alexnet_keras.neighbour_figure import NEIGHBOURS_FILE, NEIGHBOURS_JSON, write_neighbour_figures
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import DataDir

FIGURE_FILES = (KERNELS_FILE, NEIGHBOURS_FILE, NEIGHBOURS_JSON, FEATURES_FILE)


def keras_model_path(model_path, best=False):
    """The .keras file behind `model_path`; refuses an exported SavedModel."""
    path = resolve_model_path(model_path, best)
    if path.is_dir():
        raise UsageError(
            f"--figures needs the Keras model: {path} is an exported SavedModel, "
            f"which keeps neither conv1's kernels nor fc7 by name. Pass the "
            f".keras file or the training run folder it was exported from"
        )
    return path


def write_figures(
    model_path, data_dir, output_dir, best=False, batch_size=64, progress=None, log=print
):
    """Writes conv1_kernels.png, nearest_neighbours.png and .json (and the fc7_train.npy
    cache) into `output_dir` for a .keras file or a training run folder."""
    import keras

    model = keras.models.load_model(keras_model_path(model_path, best))
    # The nearest-neighbour figure searches the training images for validation images.
    info = DataDir(data_dir).checked()
    output_dir = pathlib.Path(output_dir)
    write_kernel_figure(model, output_dir / KERNELS_FILE)
    write_neighbour_figures(
        model, data_dir, output_dir, info["class_names"], batch_size, progress, log
    )
    return output_dir
