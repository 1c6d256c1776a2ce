"""TensorFlow's LRN gradient kernel (`LRNGrad`, what the training step uses) against the
gradient written as element-wise ops from the input (the `tf.custom_gradient` candidate of
issue 12), compiled by XLA into one pass and without XLA, at the shapes of norm1 and norm2.

    python bench/lrn_gradient_speed.py [--batch 32] [--rounds 7]

Prints the largest relative difference to LRNGrad and the median times, timed alternately,
and the kernel's time over each candidate's (above 1: the candidate is faster). Then the
whole training step of the paper network (`make_step_functions`) with the XLA gradient as the
LRN layers' custom gradient against the same step with LRNGrad, alternately in one process.
The XLA gradient is twice as fast alone but makes the whole step slower: it is not used.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from common import alternate, set_threads  # also puts the checkout on sys.path

# The paper's LRN, as LocalResponseNormalization's defaults.
DEPTH_RADIUS, BIAS, ALPHA, BETA = 2, 2.0, 1e-4, 0.75


def window_sum(values):
    """Sum over the 2 * DEPTH_RADIUS + 1 neighbouring channels, zero-padded at the edges."""
    channels = values.shape[-1]
    padded = tf.pad(values, [[0, 0]] * 3 + [[DEPTH_RADIUS, DEPTH_RADIUS]])
    return tf.add_n(
        [padded[..., offset : offset + channels] for offset in range(2 * DEPTH_RADIUS + 1)]
    )


@tf.function
def elementwise_gradient(inputs, outputs, upstream):
    """dx = dy * d^-beta - 2 alpha beta x * window_sum(dy * y / d), d the denominator."""
    denominator = BIAS + ALPHA * window_sum(tf.square(inputs))
    return upstream * tf.pow(denominator, -BETA) - (2 * ALPHA * BETA) * inputs * window_sum(
        upstream * outputs / denominator
    )


@tf.function(jit_compile=True)
def xla_gradient_from_input(inputs, upstream):
    """The same formula from the input alone (the denominator recomputed), one XLA pass."""
    denominator = BIAS + ALPHA * window_sum(tf.square(inputs))
    scale = tf.pow(denominator, -BETA)
    return upstream * scale - (2 * ALPHA * BETA) * inputs * window_sum(
        upstream * inputs * scale / denominator
    )


def fused_gradient(inputs, outputs, upstream):
    return xla_gradient_from_input(inputs, upstream)


def lrn_with_xla_gradient(layer):
    """A replacement for `layer.call`: the same forward op, the XLA gradient."""

    @tf.custom_gradient
    def normalize(inputs):
        outputs = tf.nn.local_response_normalization(inputs, DEPTH_RADIUS, BIAS, ALPHA, BETA)
        return outputs, lambda upstream: xla_gradient_from_input(inputs, upstream)

    assert (layer.depth_radius, layer.bias, layer.alpha, layer.beta) == (
        DEPTH_RADIUS,
        BIAS,
        ALPHA,
        BETA,
    )
    return normalize


@tf.function
def kernel_gradient(inputs, outputs, upstream):
    return tf.raw_ops.LRNGrad(
        input_grads=upstream,
        input_image=inputs,
        output_image=outputs,
        depth_radius=DEPTH_RADIUS,
        bias=BIAS,
        alpha=ALPHA,
        beta=BETA,
    )


def whole_step_ratio(batch_size, rounds):
    """Median step seconds with the XLA LRN gradient ("fused") and with LRNGrad, and the
    median of the per-round ratios LRNGrad / fused."""
    from common import training_batch

    from alexnet_keras import LocalResponseNormalization, training
    from alexnet_keras_base.config import PRESETS

    config = PRESETS["paper"].replace(global_batch_size=batch_size, learning_rate=1e-3)
    strategy = tf.distribute.get_strategy()
    batch = training_batch(batch_size)
    steps = {}
    for name in ("fused", "LRNGrad"):
        model = training.build_model(config, num_classes=1000)
        if name == "fused":  # this model's LRN layers take the XLA gradient
            for layer in model.layers:
                if isinstance(layer, LocalResponseNormalization):
                    layer.call = lrn_with_xla_gradient(layer)
        step, _ = steps.make_step_functions(
            strategy, model, steps.build_optimizer(config, model), config
        )
        steps[name] = lambda step=step: step(batch, tf.constant(0.0))["loss"].numpy()
    medians, ratios = alternate(steps, rounds)
    return medians, ratios["LRNGrad"]


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
        gradients = {
            "LRNGrad": kernel_gradient,
            "element-wise with XLA": fused_gradient,
            "element-wise (no XLA)": elementwise_gradient,
        }
        values = {key: function(inputs, outputs, upstream) for key, function in gradients.items()}
        medians, ratios = alternate(
            {
                key: lambda function=function: function(inputs, outputs, upstream).numpy()
                for key, function in gradients.items()
            },
            args.rounds,
        )
        print(f"{name} {shape}: LRNGrad {medians['LRNGrad'] * 1e3:.1f} ms")
        for key in list(gradients)[1:]:
            difference = tf.reduce_max(tf.abs(values["LRNGrad"] - values[key])) / tf.reduce_max(
                tf.abs(values["LRNGrad"])
            )
            print(
                f"  {key}: {medians[key] * 1e3:.1f} ms, LRNGrad / it {1 / ratios[key]:.2f}x, "
                f"max relative difference {float(difference):.1e}"
            )
    medians, ratio = whole_step_ratio(args.batch, args.rounds)
    print(
        f"training step, batch {args.batch}: fused {medians['fused'] * 1e3:.0f} ms, "
        f"LRNGrad {medians['LRNGrad'] * 1e3:.0f} ms; speed-up {ratio:.3f}x"
    )


if __name__ == "__main__":
    main()
