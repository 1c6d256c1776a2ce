"""Applying the network to a whole collection: the rows of `predict.py` and of the Beam job.

One row per image, in the order the inputs were listed:

    {"path": ..., "labels": [...], "scores": [...], "true_label": ..., "error": null}

`labels` and `scores` are the top k classes' names and probabilities, best first (ties: the
lower class index first, as `tf.math.top_k` and the serving signatures rank them);
`true_label` is the class the input names (an ImageFolder layout, a records folder), else
null; `error` says why an image could not be answered (its labels and scores are then empty).
"""

import numpy as np

ROW_FIELDS = ("path", "labels", "scores", "true_label", "error")
DEFAULT_TOP_K = 5


# === Rows ===


def top_k_rows(paths, probabilities, labels, top_k=DEFAULT_TOP_K, true_labels=None):
    """One answered row per path, from probabilities (batch, classes) and the class names."""
    probabilities = np.asarray(probabilities, np.float32)
    top_k = min(top_k, probabilities.shape[-1])
    # Stable: equal probabilities keep the lower class index first, as tf.math.top_k does.
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    true_labels = true_labels if true_labels is not None else [None] * len(paths)
    return [
        {"path": path,
         "labels": [labels[index] for index in classes],
         "scores": [float(probabilities[row, index]) for index in classes],
         "true_label": true_label,
         "error": None}
        for row, (path, classes, true_label) in enumerate(zip(paths, ranked, true_labels))
    ]


def error_row(path, message, true_label=None):
    """The row of an image that could not be answered."""
    return {"path": path, "labels": [], "scores": [], "true_label": true_label,
            "error": message}
