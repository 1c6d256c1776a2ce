"""The training and evaluation steps under a tf.distribute strategy, the optimizer they
update, and the sums of their metrics.

Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy, so the step is written out:
`strategy.run`, the loss averaged over the *global* batch with `tf.nn.compute_average_loss`,
and metrics summed across replicas in one all-reduce. The weight decay is not in the loss: the
optimizer (PaperSGD) applies it inside its update, after the all-reduce.
"""

import dataclasses
import hashlib
import json

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline
from alexnet_keras.optimizer import PaperSGD


def build_optimizer(config, model):
    """The paper's SGD with momentum and weight decay in one fused update (PaperSGD),
    loss-scaled for float16, with its slots created."""
    optimizer = PaperSGD(
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        kernel_decay=config.weight_decay,
    )
    if config.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


@dataclasses.dataclass
class StepSums:
    """Sums over examples, so that the sums of batches, replicas and workers add up."""

    loss: float = 0.0
    top1_correct: float = 0.0
    top5_correct: float = 0.0
    examples: float = 0.0

    @classmethod
    def of_step(cls, outputs):
        return cls(**{field.name: float(outputs[field.name]) for field in dataclasses.fields(cls)})

    def __add__(self, other):
        return StepSums(
            **{
                name: value + getattr(other, name)
                for name, value in dataclasses.asdict(self).items()
            }
        )

    @property
    def mean_loss(self):
        return self.loss / self.examples

    @property
    def top1_error(self):
        return 1 - self.top1_correct / self.examples

    @property
    def top5_error(self):
        return 1 - self.top5_correct / self.examples


STEP_OUTPUTS = (*(field.name for field in dataclasses.fields(StepSums)), "stop_requests")


def make_step_functions(strategy, model, optimizer, config):
    """tf.functions train_step(batch, stop_request) and eval_step(batch, stop_request), each
    returning a dict of sums over the global batch: StepSums' fields, and `stop_requests`,
    the number of replicas whose worker passed a `stop_request` of 1 (a SIGTERM): summed
    within the step, it is the same on every worker."""
    # The weight decay is not here: the optimizer (PaperSGD) adds it inside its update, after
    # the all-reduce, in the same pass over the weights.
    top_k = min(5, model.output.shape[-1])
    # uint8 -> float32 with the lighting noise, on the device: XLA fuses cast, shift and
    # clip into one pass over the batch.
    pixels_on_device = tf.function(input_pipeline.add_lighting, jit_compile=True)
    float16 = config.mixed_precision == "float16"

    def outputs(labels, logits, per_example_loss, stop_request):
        # One vector, in STEP_OUTPUTS' order, so that one all-reduce sums them all.
        valid = tf.cast(labels != input_pipeline.PADDING_LABEL, tf.float32)
        safe_labels = tf.maximum(labels, 0)
        top1 = tf.cast(tf.math.in_top_k(safe_labels, logits, 1), tf.float32) * valid
        top5 = tf.cast(tf.math.in_top_k(safe_labels, logits, top_k), tf.float32) * valid
        return tf.stack(
            [
                tf.reduce_sum(per_example_loss * valid),
                tf.reduce_sum(top1),
                tf.reduce_sum(top5),
                tf.reduce_sum(valid),
                stop_request,
            ]
        )

    def train_replica(images, labels, stop_request):
        pixels, rgb_shift = images  # uint8 crops and their lighting shifts (make_train_dataset)
        images = pixels_on_device(pixels, rgb_shift)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example_loss = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            loss = tf.nn.compute_average_loss(
                per_example_loss, global_batch_size=config.global_batch_size
            )
            scaled_loss = optimizer.scale_loss(loss) if float16 else loss
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return outputs(labels, logits, per_example_loss, stop_request)

    def eval_replica(images, labels, stop_request):
        logits = model(images, training=False)
        per_example_loss = keras.losses.sparse_categorical_crossentropy(
            tf.maximum(labels, 0), logits, from_logits=True
        )
        return outputs(labels, logits, per_example_loss, stop_request)

    def reduce(per_replica):
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return dict(zip(STEP_OUTPUTS, tf.unstack(total)))

    replica_step = tf.function(train_replica, jit_compile=True) if config.xla else train_replica

    @tf.function
    def train_step(batch, stop_request):
        images, labels = batch
        return reduce(strategy.run(replica_step, args=(images, labels, stop_request)))

    @tf.function
    def eval_step(batch, stop_request):
        images, labels = batch
        return reduce(strategy.run(eval_replica, args=(images, labels, stop_request)))

    return train_step, eval_step


def weights_fingerprint(model, with_architecture=False):
    """A short hash of all weights, to compare replicas and workers; `with_architecture` adds
    the model's config (what a cache of the model's outputs is keyed by)."""
    digest = hashlib.sha256()
    if with_architecture:
        digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]
