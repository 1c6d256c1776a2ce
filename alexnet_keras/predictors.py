"""The models `predict.py` runs: a `.keras` file (its network after the same header checks
and `preprocess_for_eval` as the export) or an export (its own signature on the encoded
bytes, the graph TF Serving runs); `load_predictor` picks one from a path."""

import pathlib

import tensorflow as tf

from alexnet_keras import image_headers, input_pipeline, serving
from alexnet_keras.prediction_inputs import join_path, read_text
from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.layout import ExportBase

FC7 = serving.FC7
FEATURES_SIGNATURE = serving.FEATURES


class KerasPredictor:
    """A Keras model: tf.data decodes the images (`preprocess_for_eval` behind the same
    header checks as an export), the model answers softmax(logits) and, when asked, fc7."""

    decodes_images = True

    def __init__(self, model, labels, max_pixels=serving.DEFAULT_MAX_PIXELS, features=False):
        import keras

        self.model = model
        self.labels = list(labels)
        self.max_pixels = int(max_pixels)
        self.features = features
        outputs = [model.output, model.get_layer(FC7).output] if features else [model.output]
        network = keras.Model(model.inputs, outputs)
        self.fc7_width = outputs[1].shape[-1] if features else None

        def answer(images):
            outputs = network(images, training=False)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
            probabilities = tf.nn.softmax(tf.cast(outputs[0], tf.float32))
            return probabilities, *[tf.cast(fc7, tf.float32) for fc7 in outputs[1:]]

        self._answer = tf.function(answer, reduce_retracing=True)
        self._preprocess_one = tf.function(self.preprocess)

    def preprocess(self, image_bytes):
        """Encoded image -> float32 (227, 227, 3), or InvalidArgument (the export's checks)."""
        return input_pipeline.preprocess_for_eval(
            image_headers.checked_image_bytes(image_bytes, self.max_pixels)
        )

    def answer(self, images):
        """float32 pixels (batch, 227, 227, 3) -> (probabilities, fc7 or None), numpy."""
        outputs = [output.numpy() for output in self._answer(images)]
        return outputs[0], outputs[1] if self.features else None

    def answer_one(self, image_bytes):
        """One image's (probabilities, fc7 or None), or raises its TensorFlow error."""
        return self.answer(self._preprocess_one(tf.constant(image_bytes))[tf.newaxis])


class ExportPredictor:
    """An export: its `serving_default` signature (`features` when fc7 is asked for), the
    graph TF Serving runs, on the encoded bytes; the labels are its own."""

    decodes_images = False

    def __init__(self, export_dir, features=False):
        self.path = pathlib.Path(export_dir)
        self.features = features
        self._loaded = tf.saved_model.load(str(export_dir))
        name = FEATURES_SIGNATURE if features else serving.SERVING_DEFAULT
        if name not in self._loaded.signatures:
            raise UsageError(
                f"{export_dir} has no {name} signature: export the model again "
                f"with export/export_model.py"
            )
        self._signature = self._loaded.signatures[name]
        # Through tf.io.gfile: a Beam worker loads the export from gs://... as well.
        self.labels = read_text(
            join_path(str(export_dir), f"assets/{ExportBase.LABELS_ASSET}")
        ).splitlines()
        self.fc7_width = self._signature.structured_outputs[FC7].shape[-1] if features else None

    def answer(self, image_bytes):
        """Encoded images -> (probabilities, fc7 or None); one bad image fails the batch
        with InvalidArgument, as in TF Serving."""
        outputs = self._signature(**{serving.IMAGE_BYTES: tf.constant(image_bytes, tf.string)})
        fc7 = outputs[FC7].numpy() if self.features else None
        return outputs["probabilities"].numpy(), fc7

    def answer_one(self, image_bytes):
        return self.answer([image_bytes])


def load_predictor(
    model_path, labels_path=None, max_pixels=serving.DEFAULT_MAX_PIXELS, features=False, best=False
):
    """A `.keras` file, a run folder, an export version or base -> a predictor."""
    import keras

    from alexnet_keras.evaluation import resolve_model_path

    path = resolve_model_path(model_path, best)
    if path.is_dir():
        if labels_path:
            raise UsageError(
                "--labels is for a .keras model: an export answers with its own "
                "labels (assets/labels.txt)"
            )
        return ExportPredictor(path, features)
    try:
        model = keras.models.load_model(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"cannot load {path} as a Keras model: {error}") from None
    num_classes = model.output.shape[-1]
    labels = serving.labels_for_model(path, labels_path, model=model)
    if labels is None:
        labels = [str(index) for index in range(num_classes)]
    elif len(labels) != num_classes:
        raise UsageError(f"{len(labels)} labels for {path}, which predicts {num_classes} classes")
    return KerasPredictor(model, labels, max_pixels, features)
