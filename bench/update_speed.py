"""The training step with the weight decay added to the kernels' gradients (ours) against the
same step with the L2 term on the tape (the formulation it replaced), in one process.

    python bench/weight_decay_speed.py [--batch 32] [--rounds 10]

Both steps run on their own copy of the paper network, alternately, one step each per
round, so that a shared machine's drift falls on both; prints the median step times and
the median per-round ratio (above 1: ours is faster).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import set_threads, training_batch  # noqa: E402  (also puts the checkout on sys.path)
from alexnet_keras import input_pipeline, training  # noqa: E402
from alexnet_keras.config import PRESETS  # noqa: E402


def l2_on_the_tape_step(model, optimizer, config):
    """The step as it was: 0.5 * weight_decay * sum(kernel ** 2) added to the loss."""
    kernels = [weight for weight in model.trainable_variables if training.is_decayed(weight)]

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True),
                global_batch_size=config.global_batch_size)
            loss += 0.5 * config.weight_decay * tf.add_n(
                [tf.reduce_sum(tf.square(kernel)) for kernel in kernels])
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


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

    ours_model = training.build_model(config, num_classes=1000)
    ours_step, _ = training.make_step_functions(
        strategy, ours_model, training.build_optimizer(config, ours_model), config)
    reference_model = training.build_model(config, num_classes=1000)
    reference_step = l2_on_the_tape_step(
        reference_model, training.build_optimizer(config, reference_model), config)
    steps = {
        "decay_in_gradient": lambda: ours_step(batch, tf.constant(0.0))["loss"].numpy(),
        "l2_on_the_tape": lambda: reference_step(images, labels).numpy(),
    }
    times = {name: [] for name in steps}
    for name, step in steps.items():
        step()  # trace
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        print(f"{name:20s} median {statistics.median(seconds) * 1e3:.0f} ms per step")
    ratio = statistics.median(r / o for r, o in zip(times["l2_on_the_tape"],
                                                    times["decay_in_gradient"]))
    print(f"speed-up of decay_in_gradient over l2_on_the_tape: {ratio:.3f}x "
          f"(batch {args.batch}, median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
