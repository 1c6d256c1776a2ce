"""Training speed through the real input pipeline, against in-memory tensors, in one run.

    python bench/train_speed.py [--width_multiplier 1.0] [--steps 8]

Times the project's distributed training step (alexnet_keras.steps) on the CPU, batch 32:
(1) fed by the real TFRecord pipeline (decode, crop, flip, lighting noise); (2) fed by one
batch held in memory, the ceiling; (3) like (2) but over two logical CPU devices with
MirroredStrategy, to show the cost of the replica machinery. Prints images/s and the ratios.
"""

import argparse
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

# Two logical CPU devices, set before TensorFlow initialises its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras

from common import print_results, synthetic_records  # also puts the checkout on sys.path

from alexnet_keras import input_pipeline
from alexnet_keras.model import build_alexnet
from alexnet_keras.steps import make_step_functions
from alexnet_keras_base.config import PRESETS

BATCH = 32


def images_per_second(devices, config, make_dataset, steps):
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    with strategy.scope():
        model = build_alexnet(num_classes=10, width_multiplier=config.width_multiplier)
        optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
        optimizer.build(model.trainable_variables)
    train_step, _ = make_step_functions(strategy, model, optimizer, config)
    iterator = iter(strategy.distribute_datasets_from_function(make_dataset))
    no_stop = tf.constant(0.0)

    def step():
        return train_step(next(iterator), no_stop)["loss"].numpy()

    step()  # trace and warm up
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    config = PRESETS["paper"].replace(
        width_multiplier=args.width_multiplier, global_batch_size=BATCH
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        records, info = synthetic_records(scratch, images_per_class=40, num_shards=4)
        pca = input_pipeline.PCALighting.from_dataset_info(info)
        pattern = str(records / "train-*")

        def from_records(context):
            return input_pipeline.make_train_dataset(
                pattern, BATCH, input_context=context, pca=pca, shuffle_buffer=500
            )

        held = next(
            iter(input_pipeline.make_train_dataset(pattern, BATCH, pca=pca, shuffle_buffer=500))
        )

        def in_memory(context):
            per_replica = context.get_per_replica_batch_size(BATCH)
            (pixels, rgb_shift), labels = held
            images = (pixels[:per_replica], rgb_shift[:per_replica])
            return tf.data.Dataset.from_tensors((images, labels[:per_replica])).repeat()

        results = {
            "width_multiplier": args.width_multiplier,
            "in_memory_1_replica_images_per_s": images_per_second(
                ["/cpu:0"], config, in_memory, args.steps
            ),
            "tfrecords_1_replica_images_per_s": images_per_second(
                ["/cpu:0"], config, from_records, args.steps
            ),
            "in_memory_2_replicas_images_per_s": images_per_second(
                ["/cpu:0", "/cpu:1"], config, in_memory, args.steps
            ),
        }
    results["tfrecords_vs_in_memory"] = (
        results["tfrecords_1_replica_images_per_s"] / results["in_memory_1_replica_images_per_s"]
    )
    results["2_replicas_vs_1"] = (
        results["in_memory_2_replicas_images_per_s"] / results["in_memory_1_replica_images_per_s"]
    )
    print_results(results)


if __name__ == "__main__":
    main()
