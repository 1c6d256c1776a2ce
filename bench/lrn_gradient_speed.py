"""TensorFlow's LRN gradient kernel (`LRNGrad`, what the training step uses) against the
gradient written as element-wise ops from the forward's denominator, the `tf.custom_gradient`
candidate of issue 12, at the shapes of norm1 and norm2.

    python bench/lrn_gradient_speed.py [--batch 32] [--rounds 7]

Prints the largest relative difference of the two gradients and their median times, timed
alternately; the candidate was slower and is not used.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from common import set_threads  # noqa: E402

# The paper's LRN, as LocalResponseNormalization's defaults.
DEPTH_RADIUS, BIAS, ALPHA, BETA = 2, 2.0, 1e-4, 0.75


def window_sum(values):
    """Sum over the 2 * DEPTH_RADIUS + 1 neighbouring channels, zero-padded at the edges."""
    channels = values.shape[-1]
    padded = tf.pad(values, [[0, 0]] * 3 + [[DEPTH_RADIUS, DEPTH_RADIUS]])
    return tf.add_n([padded[..., offset:offset + channels]
                     for offset in range(2 * DEPTH_RADIUS + 1)])


@tf.function
def elementwise_gradient(inputs, outputs, upstream):
    """dx = dy * d^-beta - 2 alpha beta x * window_sum(dy * y / d), d the denominator."""
    denominator = BIAS + ALPHA * window_sum(tf.square(inputs))
    return (upstream * tf.pow(denominator, -BETA)
            - (2 * ALPHA * BETA) * inputs * window_sum(upstream * outputs / denominator))


@tf.function
def kernel_gradient(inputs, outputs, upstream):
    return tf.raw_ops.LRNGrad(input_grads=upstream, input_image=inputs, output_image=outputs,
                              depth_radius=DEPTH_RADIUS, bias=BIAS, alpha=ALPHA, beta=BETA)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    set_threads(args.threads, 1)
    for name, shape in (("norm1", (55, 55, 96)), ("norm2", (27, 27, 256))):
        inputs = tf.nn.relu(tf.random.normal((args.batch, *shape))) * 30
        upstream = tf.random.normal(inputs.shape)
        outputs = tf.nn.local_response_normalization(inputs, DEPTH_RADIUS, BIAS, ALPHA, BETA)
        gradients = {"LRNGrad": kernel_gradient, "element-wise": elementwise_gradient}
        values = {key: function(inputs, outputs, upstream) for key, function in gradients.items()}
        difference = (tf.reduce_max(tf.abs(values["LRNGrad"] - values["element-wise"]))
                      / tf.reduce_max(tf.abs(values["LRNGrad"])))
        times = {key: [] for key in gradients}
        for round_index in range(args.rounds):
            for key in (list(gradients) if round_index % 2 == 0 else list(gradients)[::-1]):
                start = time.perf_counter()
                gradients[key](inputs, outputs, upstream)
                times[key].append(time.perf_counter() - start)
        kernel, elementwise = (statistics.median(times[key]) for key in gradients)
        print(f"{name} {shape}: LRNGrad {kernel * 1e3:.0f} ms, element-wise "
              f"{elementwise * 1e3:.0f} ms ({elementwise / kernel:.2f}x), "
              f"max relative difference {float(difference):.1e}")


if __name__ == "__main__":
    main()
