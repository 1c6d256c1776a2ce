"""Converter speed against the per-core limit of a plain Pillow loop, in one run.

    python bench/converter_speed.py [--images 1500]

Writes a folder of photo-sized JPEGs (500x375, noisy, like an average ImageNet image), then
times on the same files: (1) a plain single-process loop of the converter's image work with
Pillow (decode -> central square -> resize to 256 -> JPEG encode), the per-core limit of that
work without the converter's bookkeeping (statistics, TFRecord writing, resume summaries); (2) the same loop in two processes at once, the
machine's parallel limit; (3) the converter with 1 worker; (4) with 2 workers. Prints images/s
and each converter figure as a ratio of the plain loop.
"""

import argparse
import io
import multiprocessing
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image

from common import print_results  # also puts the checkout on sys.path

from alexnet_keras.tfrecords import ConvertOptions, convert


def make_photos(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(375, 500, 3)).astype(np.float32)
    for index in range(count):
        class_dir = folder / f"class_{index % 10}"
        class_dir.mkdir(parents=True, exist_ok=True)
        # Smooth structure plus noise: compresses like a photograph, not like flat colour.
        shifted = np.roll(base, index * 7, axis=1) * 0.3 + rng.normal(128, 40, size=base.shape)
        Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)).save(
            class_dir / f"photo_{index:05d}.jpg", quality=90
        )


def plain_loop(paths):
    """The converter's per-image work and nothing else, in the same order: decode, cut the
    central square, resize it to 256x256, encode as JPEG."""
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((256, 256), Image.Resampling.BICUBIC)
            image.save(io.BytesIO(), format="JPEG", quality=95)


def plain_loop_in_processes(paths, processes):
    """The plain loop over `processes` disjoint halves at once: the machine's parallel limit
    (two vCPUs are not always two cores' worth of work)."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(plain_loop, [paths[index::processes] for index in range(processes)])


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        make_photos(scratch / "photos", args.images)
        paths = sorted((scratch / "photos").rglob("*.jpg"))
        plain_loop(paths[:20])  # warm the file cache and Pillow
        baseline = args.images / timed(lambda: plain_loop(paths))
        results = {"images": args.images, "plain_pillow_loop_images_per_s": baseline}
        parallel = args.images / timed(lambda: plain_loop_in_processes(paths, 2))
        results["plain_pillow_loop_2_processes_images_per_s"] = parallel
        results["machine_2_process_scaling"] = parallel / baseline
        for workers in (1, 2):
            output = scratch / f"out_{workers}"
            options = ConvertOptions(workers=workers, num_shards=8)
            seconds = timed(
                lambda: convert(scratch / "photos", output, options, log=lambda message: None)
            )
            speed = args.images / seconds
            results[f"converter_{workers}_workers_images_per_s"] = speed
            results[f"converter_{workers}_workers_ratio"] = speed / baseline
        results["converter_2_workers_vs_2_plain_processes"] = (
            results["converter_2_workers_images_per_s"] / parallel
        )
        # The plain loop again, to show how much the machine drifted during the run.
        results["plain_pillow_loop_images_per_s_after"] = args.images / timed(
            lambda: plain_loop(paths)
        )
    print_results(results)


if __name__ == "__main__":
    main()
