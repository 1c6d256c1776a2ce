"""The parameter update: PaperSGD's fused update with the weight decay inside (ours) against
the two formulations it replaced, in one process (issue 12).

    python bench/update_speed.py [--batch 32] [--rounds 10]

Three training steps of the paper network, each on its own copy, alternately (one step each
per round, the order reversed every other round), so that a shared machine's drift falls on
all of them:
  fused              the project's step: `make_step_functions` with `build_optimizer`
                     (PaperSGD: v <- 0.9 v - lr (g + wd w), w <- w + v in one XLA loop)
  decay_in_gradient  Keras' SGD, `weight_decay * kernel` added to the kernels' gradients
                     (the step before PaperSGD)
  l2_on_the_tape     Keras' SGD, 0.5 * weight_decay * sum(kernel ** 2) added to the loss
                     (the step before that)
Then the update alone on the 60 M parameters, given the gradients: PaperSGD against Keras'
SGD with the decay added to the gradients. Prints medians and the median per-round ratios
(above 1: ours is faster).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from common import (  # also puts the checkout on sys.path
    alternate,
    print_results,
    set_threads,
    training_batch,
)

from alexnet_keras import input_pipeline, steps, training
from alexnet_keras.optimizer import is_decayed
from alexnet_keras_base.config import PRESETS


def keras_sgd(config, model):
    optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    optimizer.build(model.trainable_variables)
    return optimizer


def with_decay(config, model, gradients):
    """`weight_decay * kernel` added to the kernels' gradients."""
    return [
        gradient + config.weight_decay * weight if is_decayed(weight) else gradient
        for gradient, weight in zip(gradients, model.trainable_variables)
    ]


def keras_sgd_step(config, l2_on_the_tape):
    """A step with Keras' SGD and the decay either on the tape or in the gradients."""
    model = training.build_model(config, num_classes=1000)
    optimizer = keras_sgd(config, model)
    kernels = [weight for weight in model.trainable_variables if is_decayed(weight)]

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True),
                global_batch_size=config.global_batch_size,
            )
            if l2_on_the_tape:
                loss += (
                    0.5
                    * config.weight_decay
                    * tf.add_n([tf.reduce_sum(tf.square(kernel)) for kernel in kernels])
                )
        gradients = tape.gradient(loss, model.trainable_variables)
        if not l2_on_the_tape:
            gradients = with_decay(config, model, gradients)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return step


def update_only(config, fused):
    """The update alone, on gradients given: PaperSGD, or Keras' SGD after the decay."""
    model = training.build_model(config, num_classes=1000)
    optimizer = steps.build_optimizer(config, model) if fused else keras_sgd(config, model)
    gradients = [
        tf.random.normal(weight.shape, stddev=1e-4) for weight in model.trainable_variables
    ]

    @tf.function
    def update(gradients):
        if not fused:
            gradients = with_decay(config, model, gradients)
        optimizer.apply(gradients, model.trainable_variables)

    return lambda: update(gradients)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    set_threads(args.threads, 1)
    config = PRESETS["paper"].replace(global_batch_size=args.batch, learning_rate=1e-3)
    strategy = tf.distribute.get_strategy()
    batch = training_batch(args.batch)
    (pixels, rgb_shift), labels = batch
    images = input_pipeline.add_lighting(pixels, rgb_shift)  # what the step computes first

    model = training.build_model(config, num_classes=1000)
    fused_step, _ = steps.make_step_functions(
        strategy, model, steps.build_optimizer(config, model), config
    )
    decay_in_gradient = keras_sgd_step(config, l2_on_the_tape=False)
    l2_on_the_tape = keras_sgd_step(config, l2_on_the_tape=True)
    step_medians, step_ratios = alternate(
        {
            "fused": lambda: fused_step(batch, tf.constant(0.0))["loss"].numpy(),
            "decay_in_gradient": lambda: decay_in_gradient(images, labels).numpy(),
            "l2_on_the_tape": lambda: l2_on_the_tape(images, labels).numpy(),
        },
        args.rounds,
    )
    update_medians, update_ratios = alternate(
        {
            "fused": update_only(config, fused=True),
            "keras_sgd_after_decay": update_only(config, fused=False),
        },
        args.rounds,
    )

    results = {"batch": args.batch, "rounds": args.rounds, "threads": args.threads}
    results.update({f"step_ms_{name}": 1e3 * value for name, value in step_medians.items()})
    results.update({f"step_speedup_over_{name}": value for name, value in step_ratios.items()})
    results.update({f"update_ms_{name}": 1e3 * value for name, value in update_medians.items()})
    results.update({f"update_speedup_over_{name}": value for name, value in update_ratios.items()})
    print_results(results)


if __name__ == "__main__":
    main()
