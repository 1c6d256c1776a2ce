"""Our training step and inference, timed as bench/torch_peer.py times the PyTorch peer.

    python bench/tf_speed.py --threads 2 --training_batch 32
    python bench/tf_speed.py --smoke                # seconds: that it runs

The training step is the project's own (`alexnet_keras.steps.make_step_functions` under a
one-device MirroredStrategy, the paper's SGD with momentum 0.9 and the L2 weight decay
5e-4 on the kernels), fed one batch held in memory; inference is `model(x, training=False)`
in a tf.function. Prints one JSON line: images/s of each, medians of the timed repeats.
bench/peer_speed.py runs it alternately with the peer and prints the ratios.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from common import (  # also puts the checkout on sys.path
    SMOKE_CLASSES,
    SMOKE_WIDTH,
    median_seconds,
    parse_args,
    set_threads,
    training_batch,
)


def training_speed(batch_size, repeats, width_multiplier, num_classes):
    import keras

    from alexnet_keras import steps, training
    from alexnet_keras_base.config import PRESETS

    config = PRESETS["paper"].replace(
        global_batch_size=batch_size, learning_rate=1e-3, width_multiplier=width_multiplier
    )
    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0"])
    with strategy.scope():
        model = training.build_model(config, num_classes=num_classes)
        optimizer = steps.build_optimizer(config, model)
    train_step, _ = steps.make_step_functions(strategy, model, optimizer, config)
    batch = training_batch(batch_size, num_classes)
    no_stop = tf.constant(0.0)
    keras.utils.set_random_seed(0)

    def step():
        return train_step(batch, no_stop)["loss"].numpy()

    step()  # trace
    return batch_size / median_seconds(step, repeats)


def inference_speed(batch_size, repeats, width_multiplier, num_classes):
    from alexnet_keras import build_alexnet

    model = build_alexnet(num_classes=num_classes, width_multiplier=width_multiplier)
    images = tf.random.uniform((batch_size, 227, 227, 3), 0, 255)
    predict = tf.function(lambda x: model(x, training=False))
    return batch_size / median_seconds(lambda: predict(images).numpy(), repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--inter_op_threads", type=int, default=1)
    parser.add_argument("--training_batch", type=int, default=32)
    parser.add_argument("--inference_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.set_defaults(width_multiplier=1.0, num_classes=1000)  # the paper network
    args = parse_args(
        parser,
        argv,
        smoke=dict(
            training_batch=2,
            inference_batch=2,
            repeats=1,
            width_multiplier=SMOKE_WIDTH,
            num_classes=SMOKE_CLASSES,
        ),
    )
    set_threads(args.threads, args.inter_op_threads)
    network = (args.width_multiplier, args.num_classes)
    results = {
        "framework": f"tensorflow {tf.__version__}",
        "threads": args.threads,
        "inter_op_threads": args.inter_op_threads,
        "bfc_cpu_allocator": os.environ["TF_CPU_ALLOCATOR_USE_BFC"],
        "training_batch": args.training_batch,
        "inference_batch": args.inference_batch,
        "training_images_per_s": training_speed(args.training_batch, args.repeats, *network),
        "inference_images_per_s": inference_speed(args.inference_batch, args.repeats, *network),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
