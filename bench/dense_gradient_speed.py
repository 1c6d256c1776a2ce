"""FullyConnected's input gradient (what training uses: the transpose of kernel @ upstream^T)
against TensorFlow's MatMul gradient (matmul(upstream, kernel, transpose_b=True), what Keras'
Dense gets), at fc6's and fc7's shapes, then the whole training step of the paper network
with each, alternately in one process.

    python bench/dense_gradient_speed.py [--batch 32] [--rounds 11]

Prints the median times, the largest relative difference of the two input gradients, and
the ratios TensorFlow's / ours (above 1: ours is faster).
"""

import argparse
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from common import alternate, set_threads, training_batch  # also puts the checkout on sys.path

from alexnet_keras import FullyConnected, training
from alexnet_keras_base.config import PRESETS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    set_threads(args.threads, 1)

    for name, (inputs, units) in (("fc6", (9216, 4096)), ("fc7", (4096, 4096))):
        kernel = tf.random.normal((inputs, units), stddev=0.01)
        upstream = tf.random.normal((args.batch, units))
        ours = tf.function(lambda: tf.transpose(tf.matmul(kernel, upstream, transpose_b=True)))
        theirs = tf.function(lambda: tf.matmul(upstream, kernel, transpose_b=True))
        difference = tf.reduce_max(tf.abs(ours() - theirs())) / tf.reduce_max(tf.abs(theirs()))
        medians, ratios = alternate(
            {"ours": lambda: ours().numpy(), "tensorflow": lambda: theirs().numpy()}, args.rounds
        )
        print(
            f"{name} input gradient, batch {args.batch}: ours {medians['ours'] * 1e3:.1f} ms, "
            f"TensorFlow's {medians['tensorflow'] * 1e3:.1f} ms, speed-up {ratios['tensorflow']:.2f}x, "
            f"max relative difference {float(difference):.1e}"
        )

    config = PRESETS["paper"].replace(global_batch_size=args.batch, learning_rate=1e-3)
    strategy = tf.distribute.get_strategy()
    batch = training_batch(args.batch)
    steps = {}
    for name in ("ours", "keras_dense"):
        model = training.build_model(config, num_classes=1000)
        if name == "keras_dense":  # this model's fully connected layers are Keras' Dense
            for layer in model.layers:
                if isinstance(layer, FullyConnected):
                    layer.call = functools.partial(keras.layers.Dense.call, layer)
        step, _ = steps.make_step_functions(
            strategy, model, steps.build_optimizer(config, model), config
        )
        steps[name] = lambda step=step: step(batch, tf.constant(0.0))["loss"].numpy()
    medians, ratios = alternate(steps, args.rounds)
    print(
        f"training step, batch {args.batch}: ours {medians['ours'] * 1e3:.0f} ms, with Keras' "
        f"Dense {medians['keras_dense'] * 1e3:.0f} ms; speed-up {ratios['keras_dense']:.3f}x"
    )


if __name__ == "__main__":
    main()
