"""predict.py's speed on a folder of JPEGs against the bare model on decoded tensors.

    python bench/predict_speed.py                       # paper network, 1000 classes
    python bench/predict_speed.py --width_multiplier 0.25 --images 256
    python bench/predict_speed.py --smoke               # seconds: that it runs

Times in one process, alternating the two so that a drifting machine affects both alike:
- the prediction job, `prediction.predict` (what predict.py runs after parsing its flags): the
  folder listed, each JPEG read and decoded by tf.data (500x375 photos, ImageNet's typical
  size: rescale, central crop) in parallel with the model, softmax, top-5 rows written;
- the same model on the same images already decoded to float32 tensors, at the same batch
  size: the model's own speed, with nothing to read or decode.
The ratio (job / bare model, images/s; the median, minimum and maximum over the rounds) says how much of the decoding the pipeline hides
behind the model (target: at least 0.85). The job's speed is its steady state, from its first
batch answered to its last; what it costs before (tracing the pipeline's functions, filling
it) is given apart, as start-up seconds, once per command.
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
from serving_speed import photo_jpeg

from common import cpu_name, print_results  # also puts the checkout on sys.path

from alexnet_keras import build_alexnet, prediction, prediction_inputs, predictors


class BatchClock:
    """A progress bar that notes when each batch's rows were written."""

    def __init__(self):
        self.times, self.counts = [], []

    def __call__(self, total, description):
        return self

    def update(self, count=1):
        if count:
            self.times.append(time.perf_counter())
            self.counts.append(count)

    def close(self):
        pass

    @property
    def first(self):
        return self.times[0]

    def steady_speed(self):
        """Images a second from the first batch's rows to the last's."""
        return sum(self.counts[1:]) / (self.times[-1] - self.times[0])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=640, help="JPEGs in the folder")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny network, 16 images, one round: checks that it runs",
    )
    args = parser.parse_args()
    if args.smoke:
        args.width_multiplier, args.num_classes, args.images = 0.125, 10, 16
        args.batch_size, args.rounds = 8, 1

    model = build_alexnet(num_classes=args.num_classes, width_multiplier=args.width_multiplier)
    labels = [f"class_{index}" for index in range(args.num_classes)]
    predictor = predictors.KerasPredictor(model, labels)
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        images = folder / "images"
        images.mkdir()
        # A few distinct photos, repeated: decoding costs the same for each copy.
        photos = [photo_jpeg(seed) for seed in range(16)]
        for index in range(args.images):
            (images / f"{index:05d}.jpg").write_bytes(photos[index % len(photos)])
        pixels = tf.stack([predictor.preprocess(tf.constant(photo)) for photo in photos])
        batch = tf.gather(pixels, np.arange(args.batch_size) % len(photos))
        full_batches, rest = divmod(args.images, args.batch_size)

        def job():
            output = folder / "rows.jsonl"
            output.unlink(missing_ok=True)
            start = time.perf_counter()
            clock = BatchClock()
            prediction.predict(
                prediction_inputs.list_inputs([images]),
                predictor,
                output,
                args.batch_size,
                progress=clock,
                log=lambda message: None,
            )
            return clock.first - start, clock.steady_speed()

        def bare_model():
            start = time.perf_counter()
            for _ in range(full_batches):
                predictor.answer(batch)
            if rest:
                predictor.answer(batch[:rest])
            return 0.0, args.images / (time.perf_counter() - start)

        job(), bare_model()  # tracing, warm-up
        results = {"job": [], "bare": []}
        for round_index in range(args.rounds):
            order = [("job", job), ("bare", bare_model)]
            for name, function in order if round_index % 2 == 0 else order[::-1]:
                results[name].append(function())
    job_speed = statistics.median(speed for _, speed in results["job"])
    bare_speed = statistics.median(speed for _, speed in results["bare"])
    # Each round's two runs are neighbours in time: their ratio drifts less than the medians.
    ratios = [job / bare for (_, job), (_, bare) in zip(results["job"], results["bare"])]
    print_results(
        {
            "cpu": cpu_name(),
            "width_multiplier": args.width_multiplier,
            "batch_size": args.batch_size,
            "images": args.images,
            "predict_images_per_second": job_speed,
            "bare_model_images_per_second": bare_speed,
            "predict_over_bare_model": statistics.median(ratios),
            "predict_over_bare_model_min": min(ratios),
            "predict_over_bare_model_max": max(ratios),
            "predict_start_up_seconds": statistics.median(start for start, _ in results["job"]),
        }
    )


if __name__ == "__main__":
    main()
