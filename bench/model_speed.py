"""Model speed on this machine, as a fraction of its own matmul ceiling.

    python bench/model_speed.py            # paper network, fp32, CPU or first GPU
    python bench/model_speed.py --compare_keras_groups

Measures in one run: the FLOP/s of a large float32 matmul (the practical ceiling of the
device), inference images/s at batch 64 and training-step images/s at batch 32 (forward,
backward, SGD-momentum update). Each speed is also printed as a fraction of the ceiling,
counting the network's forward FLOPs (about 1.45 GFLOP per image) and, per training image,
what the step computes: forward, weight gradients, and input gradients of every layer but
conv1 (about 4.0 GFLOP). The ceiling is measured before and after, and the higher is used.
Ratios measured in one run stay meaningful on a shared, drifting machine.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from common import call_times, print_results  # also puts the checkout on sys.path

from alexnet_keras import GroupedConv2D, build_alexnet


def training_flops(model):
    """FLOPs of one training image: the forward pass, the weight gradients of every conv and
    dense layer (as many FLOPs as its forward), and the input gradients of every layer but
    conv1 (the images need no gradient, so TensorFlow never computes conv1's)."""
    conv1 = layer_flops(model.get_layer("conv1"))
    forward = forward_flops(model)
    return 3 * forward - conv1


def layer_flops(layer):
    """Multiply-adds x 2 of one image through a conv or dense layer; 0 for other layers."""
    if isinstance(layer, (GroupedConv2D, keras.layers.Conv2D)):
        _, height, width, filters = layer.output.shape
        kernel_height, kernel_width, in_per_group, _ = layer.kernel.shape
        return 2 * height * width * filters * kernel_height * kernel_width * in_per_group
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(np.prod(layer.kernel.shape))
    return 0


def forward_flops(model):
    """FLOPs (multiply-adds x 2) of one image's forward pass through the conv and dense
    layers."""
    return sum(layer_flops(layer) for layer in model.layers)


def best_time(function, repeats):
    """Fastest of `repeats` timed calls, after one untimed warm-up call."""
    return min(call_times(function, repeats))


def matmul_ceiling(size=4096, repeats=5):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.matmul(a, b))
    seconds = best_time(lambda: matmul().numpy(), repeats)
    return 2 * size**3 / seconds


def inference_speed(model, batch_size, repeats):
    images = tf.random.uniform((batch_size, 227, 227, 3), 0, 255)
    predict = tf.function(lambda x: model(x, training=False))
    seconds = best_time(lambda: predict(images).numpy(), repeats)
    return batch_size / seconds


def training_speed(model, batch_size, repeats, steps_per_repeat=3):
    images = tf.random.uniform((batch_size, 227, 227, 3), 0, 255)
    labels = tf.random.uniform((batch_size,), 0, model.output.shape[-1], dtype=tf.int32)
    optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    def run():
        for _ in range(steps_per_repeat):
            loss = train_step()
        loss.numpy()

    seconds = best_time(run, repeats)
    return batch_size * steps_per_repeat / seconds


def keras_groups_alexnet():
    """The same network with Keras' own Conv2D(groups=2) (XLA-compiled on TensorFlow)."""
    config = build_alexnet().get_config()
    for layer_config in config["layers"]:
        if layer_config["class_name"] == "GroupedConv2D":
            layer_config["class_name"] = "Conv2D"
            layer_config.pop("module", None)
            layer_config.pop("registered_name", None)
    return keras.Model.from_config(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inference_batch", type=int, default=64)
    parser.add_argument("--training_batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare_keras_groups",
        action="store_true",
        help="also time the network built with keras.layers.Conv2D(groups=2)",
    )
    args = parser.parse_args()

    model = build_alexnet()
    flops = forward_flops(model)
    step_flops = training_flops(model)
    ceiling_before = matmul_ceiling()
    results = {
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "forward_gflop_per_image": flops / 1e9,
        "training_gflop_per_image": step_flops / 1e9,
    }
    inference = inference_speed(model, args.inference_batch, args.repeats)
    training = training_speed(model, args.training_batch, args.repeats)
    if args.compare_keras_groups:
        # Timed exactly as ours: same repeats, same steps per repeat, best of them.
        keras_training = training_speed(keras_groups_alexnet(), args.training_batch, args.repeats)
        results["keras_groups_training_images_per_s"] = keras_training
        results["grouped_conv2d_speedup_over_keras_groups"] = training / keras_training
    # The ceiling drifts on a shared machine: it is measured before and after, and the
    # fractions divide by the higher, the best this machine showed during the run.
    ceiling_after = matmul_ceiling()
    ceiling = max(ceiling_before, ceiling_after)
    results["matmul_ceiling_gflops_before"] = ceiling_before / 1e9
    results["matmul_ceiling_gflops_after"] = ceiling_after / 1e9
    results["inference_images_per_s"] = inference
    results["inference_fraction_of_ceiling"] = inference * flops / ceiling
    results["training_images_per_s"] = training
    results["training_fraction_of_ceiling"] = training * step_flops / ceiling

    print_results(results)


if __name__ == "__main__":
    main()
