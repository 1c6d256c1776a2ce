"""What the serving signature's decoding and preprocessing cost, against the bare model.

    python bench/serving_speed.py                      # paper network, 1000 classes
    python bench/serving_speed.py --width_multiplier 0.25

Exports the network with `export_model` (the real SavedModel TF Serving loads), reloads it,
and times in one process, alternating the two so that a drifting machine affects both alike:
- `serving_default` on JPEG bytes (500x375 photos, the typical ImageNet size): decode,
  rescale, central crop, model, softmax, top-5;
- the bare Keras model on the same images already preprocessed to float32 tensors.
Batch 1 gives the latency overhead, batch 32 the throughput overhead (target: at most 15%).
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from common import print_results  # also puts the checkout on sys.path

from alexnet_keras import build_alexnet, preprocess_for_eval, serving


def photo_jpeg(seed, width=500, height=375):
    """A JPEG with a photo's mix of smooth regions and texture (so decoding costs what it
    costs on photos, unlike a flat or pure-noise picture)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[np.newaxis], (height, width), method="bicubic")[0]
    texture = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    pixels = tf.cast(tf.clip_by_value(smooth + texture, 0, 255), tf.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def alternating_medians(first, second, repeats):
    """Median seconds of each function over `repeats` alternating calls, after a warm-up."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for function, record in zip((first, second), times):
            start = time.perf_counter()
            function()
            record.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    model = build_alexnet(num_classes=args.num_classes, width_multiplier=args.width_multiplier)
    labels = [f"class_{index}" for index in range(args.num_classes)]
    bare_model = tf.function(lambda images: model(images, training=False))
    results = {"cpu": _cpu_name(), "network_width": args.width_multiplier}
    with tempfile.TemporaryDirectory() as folder:
        export = serving.export_model(
            model, pathlib.Path(folder) / "alexnet", labels, log=lambda message: None
        )
        serve = tf.saved_model.load(str(export)).signatures[serving.SERVING_DEFAULT]
        for batch_size, repeats in ((1, args.repeats * 4), (32, args.repeats)):
            jpegs = tf.constant([photo_jpeg(seed) for seed in range(batch_size)])
            pixels = tf.stack([preprocess_for_eval(image) for image in jpegs])
            served, bare = alternating_medians(
                lambda: serve(image_bytes=jpegs)["top_k_classes"].numpy(),
                lambda: bare_model(pixels).numpy(),
                repeats,
            )
            results[f"batch {batch_size}: serving_default on JPEG, ms"] = served * 1e3
            results[f"batch {batch_size}: bare model on tensors, ms"] = bare * 1e3
            results[f"batch {batch_size}: serving_default images/s"] = batch_size / served
            results[f"batch {batch_size}: overhead of decoding + preprocessing"] = served / bare - 1
    print_results(results)


def _cpu_name():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
