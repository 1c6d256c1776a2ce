"""The input that training runs: what `make_train_dataset(training=True)` gives each worker."""

import json

import numpy as np
import tensorflow as tf

from alexnet_keras import input_pipeline as ip


def first_train_records(records, count):
    shard = sorted(records.glob("train-*.tfrecord"))[0]
    return [record.numpy() for record in tf.data.TFRecordDataset(str(shard)).take(count)]


def test_training_batches_are_preprocess_for_train_of_each_record(synthetic_records, tmp_path):
    """Training crops, flips and lights per batch (`random_crop_and_flip`, then the batched
    lighting); `preprocess_for_train` does it per image. Both must give the same images for the
    same per-example seeds."""
    records = first_train_records(synthetic_records, 6)
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)
    info = json.loads((synthetic_records / "dataset.json").read_text())
    pca = ip.PCALighting.from_dataset_info(info)
    seed = 5
    # One file and a shuffle buffer of 1 keep the file order; the seeds are the pipeline's.
    dataset = ip.make_train_dataset(
        str(shard), 6, pca=pca, shuffle_buffer=1, seed=seed, deterministic=True
    )
    (pixels, rgb_shifts), labels = next(iter(dataset))
    assert pixels.dtype == tf.uint8 and rgb_shifts.shape == (6, 3)
    images = ip.add_lighting(pixels, rgb_shifts)  # as the training step does, on the device
    seeds = list(tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True).take(6))
    for index, (record, example_seed) in enumerate(zip(records, seeds)):
        image_bytes, label = ip.parse_example(record)
        expected = ip.preprocess_for_train(image_bytes, example_seed, pca)
        assert int(labels[index]) == int(label)
        np.testing.assert_allclose(images[index].numpy(), expected.numpy(), atol=1e-3)
    # Without lighting noise the batches are the crops themselves.
    plain = ip.make_train_dataset(str(shard), 6, shuffle_buffer=1, seed=seed, deterministic=True)
    (pixels, rgb_shifts), _ = next(iter(plain))
    np.testing.assert_array_equal(rgb_shifts.numpy(), np.zeros((6, 3)))
    for index, (record, example_seed) in enumerate(zip(records, seeds)):
        expected = ip.preprocess_for_train(ip.parse_example(record)[0], example_seed)
        np.testing.assert_array_equal(
            ip.add_lighting(pixels, rgb_shifts)[index].numpy(), expected.numpy()
        )


def test_each_worker_draws_its_own_augmentation(synthetic_records, tmp_path):
    # One image repeated: whatever record each worker's pipeline reads, identical seeds
    # would give identical batches.
    record = first_train_records(synthetic_records, 1)[0]
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for _ in range(16):
            writer.write(record)
    batches = []
    for worker in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        dataset = ip.make_train_dataset(
            str(shard),
            8,
            input_context=context,
            shuffle_buffer=4,
            seed=3,
            deterministic=True,
        )
        (pixels, _), _ = next(iter(dataset))
        batches.append(pixels.numpy())
    assert batches[0].shape == batches[1].shape == (4, 227, 227, 3)
    differing = [not np.array_equal(one, two) for one, two in zip(*batches)]
    assert all(differing), differing
