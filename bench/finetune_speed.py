"""The training step's speed with frozen layers: `--train_layers all` against the lower
layers frozen, on random batches, one process.

    python bench/finetune_speed.py [--width 1.0] [--batch 32] [--steps 5]
    python bench/finetune_speed.py --smoke      # seconds: that it runs

The frozen layers are out of `model.trainable_variables`: no update, and the backward pass
stops at the lowest trained layer, so the step is faster the higher that layer is. Prints
images/s per setting (the median of --steps timed steps after two warm-up steps).
"""

import argparse
import statistics
import time

from peer_speed import cpu_name

from common import SMOKE_CLASSES, SMOKE_WIDTH, parse_args, training_batch

SETTINGS = ("all", "conv3,conv4,conv5,fc6,fc7,fc8", "fc6,fc7,fc8", "fc8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.set_defaults(num_classes=1000)  # the paper's
    args = parse_args(
        parser, argv, smoke=dict(width=SMOKE_WIDTH, batch=2, steps=1, num_classes=SMOKE_CLASSES)
    )

    import tensorflow as tf

    from alexnet_keras import finetune, steps, training
    from alexnet_keras_base.config import PRESETS

    print(f"CPU: {cpu_name()}; width {args.width}, batch {args.batch}")
    config = PRESETS["paper"].replace(width_multiplier=args.width, global_batch_size=args.batch)
    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0"])
    batch = training_batch(args.batch, args.num_classes)
    for train_layers in SETTINGS:
        run_config = config.replace(train_layers=train_layers, init_from="(random weights)")
        with strategy.scope():
            model = training.build_model(run_config, num_classes=args.num_classes)
            finetune.freeze(model, run_config.trained_layers)
            optimizer = steps.build_optimizer(run_config, model)
        train_step, _ = steps.make_step_functions(strategy, model, optimizer, run_config)
        seconds = []
        for step in range(args.steps + 2):
            start = time.perf_counter()
            train_step(batch, tf.constant(0.0))["loss"].numpy()
            if step >= 2:
                seconds.append(time.perf_counter() - start)
        print(
            f"--train_layers {train_layers}: {args.batch / statistics.median(seconds):.1f} "
            f"images/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
