"""The tests' small untrained AlexNet and a labels file for it. An eighth of the paper's
width, seeded He-normal kernels and inputs scaled by 1/64: a network built in a second whose
answers differ from image to image and class to class (the paper's N(0, 0.01) kernels under
biases of 1 make the logits almost constant)."""

import keras

import alexnet_keras
from alexnet_keras_base.layout import DataDir


def small_alexnet(num_classes, seed, **overrides):
    """The model, built after seeding Keras with `seed`; `overrides` go to build_alexnet."""
    keras.utils.set_random_seed(seed)
    settings = dict(width_multiplier=0.125, kernel_init="he_normal", input_scale=1 / 64)
    return alexnet_keras.build_alexnet(num_classes=num_classes, **{**settings, **overrides})


def saved_small_alexnet(path, num_classes, seed, **overrides):
    """small_alexnet saved as the .keras file `path`; -> path."""
    small_alexnet(num_classes, seed, **overrides).save(path)
    return path


def written_labels(path, class_names):
    """A labels file (one name a line, as the converter writes) at `path`; -> path."""
    path.write_text(DataDir.labels_text(class_names))
    return path
