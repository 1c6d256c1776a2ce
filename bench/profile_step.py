"""Where the training step's time goes, layer by layer (issue 12).

    python bench/profile_step.py [--batch 32] [--repeats 5] [--threads 2]

Times each layer of the paper network alone, in tf.functions, at the shapes it has inside
the step: the forward pass (training=True), then forward + input gradient and forward +
weight gradient, whose differences to the forward are the two backward parts (inside a
tf.function TensorFlow prunes the gradient nobody asked for). conv1 gets no input gradient:
the step never computes it. Then the parameter-wide work: the optimizer's update with the
weight decay inside (PaperSGD, one fused pass); the split and concat of the grouped convolutions (their copies, included in those
layers' times); and the whole real step (`steps.make_step_functions`) to compare the sum
of the parts with. Layout conversions of oneDNN happen inside each op and are part of its
time. Every figure is the median of `repeats` calls; the table prints ms per step and the
share of the sum of the parts.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from common import median_seconds, set_threads, training_batch  # also puts the checkout on sys.path

from alexnet_keras import GroupedConv2D, steps, training
from alexnet_keras_base.config import PRESETS


def layer_times(layer, batch_size, repeats, needs_input_gradient):
    """(forward, input gradient, weight gradient) seconds of one layer at its model shapes."""
    inputs = tf.random.uniform((batch_size, *layer.input.shape[1:]), 0, 2)
    upstream = tf.random.normal((batch_size, *layer.output.shape[1:]))

    @tf.function
    def forward(x):
        return layer(x, training=True)

    @tf.function
    def input_gradient(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, x, output_gradients=dy)

    @tf.function
    def weight_gradient(x, dy):
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
        return tape.gradient(y, layer.trainable_weights, output_gradients=dy)

    forward_seconds = median_seconds(lambda: forward(inputs), repeats)
    input_seconds = weight_seconds = 0.0
    if needs_input_gradient:
        input_seconds = median_seconds(lambda: input_gradient(inputs, upstream), repeats)
        input_seconds = max(0.0, input_seconds - forward_seconds)
    if layer.trainable_weights:
        weight_seconds = median_seconds(lambda: weight_gradient(inputs, upstream), repeats)
        weight_seconds = max(0.0, weight_seconds - forward_seconds)
    return forward_seconds, input_seconds, weight_seconds


def split_concat_seconds(layer, batch_size, repeats):
    """The copies of a grouped convolution alone: its input split, its output concat."""
    inputs = tf.random.uniform((batch_size, *layer.input.shape[1:]))
    halves = [
        tf.random.uniform((batch_size, *layer.output.shape[1:-1], layer.filters // 2))
        for _ in range(2)
    ]
    split_and_concat = tf.function(
        lambda x, parts: (tf.split(x, 2, axis=-1), tf.concat(parts, axis=-1))
    )
    return median_seconds(lambda: split_and_concat(inputs, halves), repeats)


def parameter_update_seconds(model, optimizer, repeats):
    """The optimizer's update of all parameters, given their gradients: PaperSGD's one
    fused pass, the weight decay included."""
    variables = model.trainable_variables
    gradients = [tf.random.normal(variable.shape, stddev=1e-4) for variable in variables]

    @tf.function
    def update(gradients):
        optimizer.apply(gradients, variables)

    return median_seconds(lambda: update(gradients), repeats)


def whole_step_seconds(model, optimizer, config, repeats):
    strategy = tf.distribute.get_strategy()
    train_step, _ = steps.make_step_functions(strategy, model, optimizer, config)
    batch_size = config.global_batch_size
    batch = training_batch(batch_size)
    no_stop = tf.constant(0.0)
    return median_seconds(lambda: train_step(batch, no_stop)["loss"].numpy(), repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    set_threads(args.threads, 1)
    config = PRESETS["paper"].replace(global_batch_size=args.batch, learning_rate=1e-3)
    model = training.build_model(config, num_classes=1000)
    optimizer = steps.build_optimizer(config, model)

    rows = []  # (name, forward, input gradient, weight gradient) in seconds
    for layer in model.layers[1:]:
        needs_input_gradient = layer.name not in ("mean_subtraction", "conv1")
        rows.append(
            (layer.name, *layer_times(layer, args.batch, args.repeats, needs_input_gradient))
        )
    update = parameter_update_seconds(model, optimizer, args.repeats)
    rows.append(("weight decay + SGD-momentum update (PaperSGD, fused)", 0.0, 0.0, update))
    total = sum(sum(row[1:]) for row in rows)
    step = whole_step_seconds(model, optimizer, config, args.repeats)

    print(
        f"batch {args.batch}, {args.threads} threads, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}; ms per training step"
    )
    print("| layer | forward | input grad | weight grad | total | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, forward, input_gradient, weight_gradient in rows:
        layer_total = forward + input_gradient + weight_gradient
        print(
            f"| {name} | {forward * 1e3:.1f} | {input_gradient * 1e3:.1f} | "
            f"{weight_gradient * 1e3:.1f} | {layer_total * 1e3:.1f} | "
            f"{layer_total / total:.1%} |"
        )
    print(f"| sum of the parts | | | | {total * 1e3:.1f} | 100% |")
    print(
        f"| the real step (make_step_functions) | | | | {step * 1e3:.1f} | "
        f"{step / total:.0%} of the sum |"
    )
    for layer in model.layers:
        if isinstance(layer, GroupedConv2D) and layer.groups > 1:
            copies = split_concat_seconds(layer, args.batch, args.repeats)
            print(
                f"{layer.name}: split + concat alone {copies * 1e3:.1f} ms per forward "
                f"(the backward has the same two copies in reverse)"
            )


if __name__ == "__main__":
    main()
