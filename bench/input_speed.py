"""Training input pipeline speed against bare JPEG decoding of the same records, in one run.

    python bench/input_speed.py [--images 3000]

Converts synthetic images to TFRecords, then times on the same cores: (1) read + parse +
`tf.io.decode_jpeg` alone, parallel map, the floor any JPEG pipeline pays; (2) the full
training pipeline (`make_train_dataset(training=True)`: shuffle, decode-and-crop, flip, PCA
lighting noise shifts, batching; uint8 out, made float32 on the device by the training step).
Prints images/s and (2) as a ratio of (1): with the same accurate DCT as the pipeline, with
TensorFlow's default (fast) DCT, and with the batch converted to float32 in the pipeline (what
the training pipeline handed out before it kept uint8).
"""

import argparse
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from common import print_results, synthetic_records  # also puts the checkout on sys.path

from alexnet_keras import input_pipeline

BATCH = 128


def images_per_second(dataset, images):
    """Images/s over `images` images, after one untimed batch."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    seen = 0
    while seen < images:
        batch = next(iterator)
        seen += int(batch[1].shape[0])  # the labels: training images are a pair
    return seen / (time.perf_counter() - start)


def bare_decode(pattern, dct_method, to_float=False):
    files = tf.data.Dataset.list_files(pattern, shuffle=False)
    dataset = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE)

    def decode(record):
        image_bytes, label = input_pipeline.parse_example(record)
        return tf.io.decode_jpeg(image_bytes, channels=3, dct_method=dct_method), label

    dataset = dataset.repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH)
    if to_float:
        dataset = dataset.map(
            lambda images, labels: (tf.cast(images, tf.float32), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        records, info = synthetic_records(scratch, images_per_class=100, num_shards=8)
        pattern = str(records / "train-*")
        pca = input_pipeline.PCALighting.from_dataset_info(info)
        training = input_pipeline.make_train_dataset(pattern, BATCH, pca=pca, shuffle_buffer=2000)
        results = {
            "bare_decode_accurate_dct_images_per_s": images_per_second(
                bare_decode(pattern, "INTEGER_ACCURATE"), args.images
            ),
            "bare_decode_default_dct_images_per_s": images_per_second(
                bare_decode(pattern, ""), args.images
            ),
            "bare_decode_to_float32_images_per_s": images_per_second(
                bare_decode(pattern, "INTEGER_ACCURATE", to_float=True), args.images
            ),
            "training_pipeline_images_per_s": images_per_second(training, args.images),
        }
        results["ratio_vs_bare_accurate_decode"] = (
            results["training_pipeline_images_per_s"]
            / results["bare_decode_accurate_dct_images_per_s"]
        )
        results["ratio_vs_bare_decode_to_float32"] = (
            results["training_pipeline_images_per_s"]
            / results["bare_decode_to_float32_images_per_s"]
        )
        results["ratio_vs_bare_default_decode"] = (
            results["training_pipeline_images_per_s"]
            / results["bare_decode_default_dct_images_per_s"]
        )
    print_results(results)


if __name__ == "__main__":
    main()
