"""The `classify` signature: TF Serving's Classify API on serialized `tf.train.Example`s.

    POST /v1/models/alexnet:classify
    {"signature_name": "classify", "examples": [{"image/encoded": {"b64": "..."}}]}

Input `inputs`: string [batch], serialized Examples holding the encoded image under the
records' image key (`Feature.ENCODED`). Outputs `classes` (string labels) and `scores`
(float32), both [batch, top-k], the top-k of serving_default on the same image bytes.

TF Serving answers `:classify` (REST) and `Classify` (gRPC) only from a signature whose
`method_name` is `tensorflow/serving/classify`, with one input named `inputs` and one or two
outputs named `classes` and `scores` (its servables/tensorflow/classifier.cc). A TF2
SavedModel writes every signature as `tensorflow/serving/predict`, so the export sets the
method name in saved_model.pb after saving (`set_classify_method_name`), before the
version is renamed into place.
"""

import pathlib

import tensorflow as tf

from alexnet_keras_base.layout import ExportBase, Feature

CLASSIFY = "classify"
INPUTS = tf.saved_model.CLASSIFY_INPUTS  # "inputs"
CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES  # "classes"
SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES  # "scores"
METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME  # "tensorflow/serving/classify"
# Only the image: an Example may carry the records' other features, which are not read.
EXAMPLE_FEATURES = {Feature.ENCODED: tf.io.FixedLenFeature([], tf.string)}

INPUT_SIGNATURE = [tf.TensorSpec((None,), tf.string, name=INPUTS)]


def image_bytes_of_examples(serialized):
    """string [batch] of serialized Examples -> string [batch] of encoded images. An Example
    without the image key fails with InvalidArgument naming the key."""
    return tf.io.parse_example(serialized, EXAMPLE_FEATURES)[Feature.ENCODED]


def classification(answer):
    """The outputs of serving_default (a dict) -> the Classify API's two outputs."""
    return {CLASSES: answer["top_k_labels"], SCORES: answer["top_k_scores"]}


def set_classify_method_name(export_dir):
    """Marks the `classify` signature of the SavedModel in `export_dir` as TF Serving's
    Classify method, and writes the SavedModel's fingerprint again for the changed file."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model import fingerprinting_utils

    path = pathlib.Path(export_dir) / ExportBase.SAVED_MODEL
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if CLASSIFY not in meta_graph.signature_def:  # indexing would add an empty one
            raise ValueError(f"{path} has no {CLASSIFY} signature")
        meta_graph.signature_def[CLASSIFY].method_name = METHOD_NAME
    path.write_bytes(saved_model.SerializeToString(deterministic=True))
    fingerprinting_utils.write_fingerprint(str(export_dir))


def example_of(image_bytes):
    """A `tf.train.Example` holding `image_bytes` under the records' image key."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))
    return tf.train.Example(features=tf.train.Features(feature={Feature.ENCODED: feature}))


def warmup_records(model_name, images, batch_sizes):
    """Serialized `PredictionLog`s with a ClassificationRequest for each batch size."""
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        model_pb2,
        prediction_log_pb2,
    )

    records = []
    for batch_size in batch_sizes:
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=CLASSIFY),
            input=input_pb2.Input(
                example_list=input_pb2.ExampleList(
                    examples=[example_of(image) for image in images[:batch_size]]
                )
            ),
        )
        log = prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)
        )
        records.append(log.SerializeToString())
    return records
