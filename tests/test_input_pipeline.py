import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_keras import input_pipeline as ip


def position_image(image_format="PNG"):
    """256x256 image whose red channel is the column and green channel the row."""
    columns, rows = np.meshgrid(np.arange(256), np.arange(256))
    pixels = np.stack([columns, rows, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, quality=100, subsampling=0)
    return tf.constant(buffer.getvalue())


def flat_image(value=128, size=256):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, format="PNG")
    return tf.constant(buffer.getvalue())


def crop_position(image):
    """(left, top, flipped) of a crop of position_image(), robust to JPEG coding."""
    image = image.numpy()
    left_red, right_red = image[:, 0, 0].mean(), image[:, -1, 0].mean()
    flipped = left_red > right_red
    top = image[0, :, 1].mean()
    return int(round(min(left_red, right_red))), int(round(top)), bool(flipped)


def seeds(count):
    return [tf.constant([index, 7], tf.int64) for index in range(count)]


def test_train_preprocessing_shape_dtype_range_eagerly_and_in_tf_data():
    image_bytes = position_image()
    pca = ip.PCALighting([0.2, 0.02, 0.005], np.eye(3).tolist())
    eager = [ip.preprocess_for_train(image_bytes, seed, pca) for seed in seeds(8)]
    dataset = tf.data.Dataset.from_tensor_slices(tf.stack(seeds(8))).map(
        lambda seed: ip.preprocess_for_train(image_bytes, seed, pca)
    )
    in_graph = list(dataset)
    for eager_image, graph_image in zip(eager, in_graph):
        assert eager_image.shape == (227, 227, 3) and eager_image.dtype == tf.float32
        assert (
            float(tf.reduce_min(eager_image)) >= 0.0 and float(tf.reduce_max(eager_image)) <= 255.0
        )
        # The same seed gives the same augmentation eagerly and inside tf.data.
        np.testing.assert_allclose(eager_image.numpy(), graph_image.numpy(), atol=1e-3)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_random_crops_reach_all_corners_and_flip_about_half_the_time(image_format):
    # JPEG takes the decode-and-crop path, PNG the decode-then-crop path.
    image_bytes = position_image(image_format)
    dataset = tf.data.Dataset.from_tensor_slices(tf.stack(seeds(400))).map(
        lambda seed: ip.preprocess_for_train(image_bytes, seed),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    positions = [crop_position(image) for image in dataset]
    lefts, tops, flips = zip(*positions)
    assert min(lefts) == 0 and max(lefts) == 256 - 227
    assert min(tops) == 0 and max(tops) == 256 - 227
    assert 0.4 < np.mean(flips) < 0.6
    assert len(set(zip(lefts, tops))) > 200  # many distinct crops, not a few


def test_jpeg_and_other_formats_give_the_same_crop_for_the_same_seed():
    for seed in seeds(20):
        from_jpeg = ip.preprocess_for_train(position_image("JPEG"), seed)
        from_png = ip.preprocess_for_train(position_image("PNG"), seed)
        assert crop_position(from_jpeg) == crop_position(from_png)
        np.testing.assert_allclose(from_jpeg.numpy(), from_png.numpy(), atol=4)


def test_pca_lighting_shifts_along_eigenvectors_scaled_by_eigenvalues():
    rng = np.random.default_rng(0)
    eigenvectors, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigenvectors = eigenvectors.T  # rows are eigenvectors
    eigenvalues = np.array([0.2, 0.05, 0.01])
    pca = ip.PCALighting(eigenvalues.tolist(), eigenvectors.tolist())
    image_bytes = flat_image(128)
    shifts = []
    for seed in seeds(600):
        image = ip.preprocess_for_train(image_bytes, seed, pca).numpy()
        # One shift for the whole image: every pixel moves by the same RGB vector.
        np.testing.assert_allclose(image, np.broadcast_to(image[0, 0], image.shape), atol=1e-3)
        shifts.append(image[0, 0] - 128.0)
    shifts = np.array(shifts)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=1.0)
    coefficients = shifts @ eigenvectors.T  # projection on each eigenvector
    measured_std = coefficients.std(axis=0) / (255.0 * eigenvalues)
    np.testing.assert_allclose(measured_std, 0.1, rtol=0.15)


def test_eval_preprocessing_is_the_central_crop():
    image = ip.preprocess_for_eval(position_image())
    assert image.shape == (227, 227, 3) and image.dtype == tf.float32
    assert crop_position(image) == (14, 14, False)


def test_eval_preprocessing_rescales_other_sizes_like_the_converter():
    buffer = io.BytesIO()
    Image.new("RGB", (640, 320), (10, 200, 30)).save(buffer, format="JPEG", quality=95)
    image = ip.preprocess_for_eval(tf.constant(buffer.getvalue()))
    assert image.shape == (227, 227, 3)
    np.testing.assert_allclose(image.numpy().mean(axis=(0, 1)), [10, 200, 30], atol=3)


def test_ten_crop_corners_centre_and_mirrors():
    crops = ip.ten_crop(position_image())
    assert crops.shape == (10, 227, 227, 3) and crops.dtype == tf.float32
    positions = [crop_position(crop) for crop in crops]
    expected = [(0, 0), (29, 0), (0, 29), (29, 29), (14, 14)]
    assert positions[:5] == [(left, top, False) for left, top in expected]
    assert positions[5:] == [(left, top, True) for left, top in expected]
    in_graph = next(iter(tf.data.Dataset.from_tensors(position_image()).map(ip.ten_crop)))
    np.testing.assert_array_equal(in_graph.numpy(), crops.numpy())


def test_make_train_dataset_batches_are_deterministic_when_asked(synthetic_records):
    info = ip.load_dataset_info(synthetic_records)
    pca = ip.PCALighting.from_dataset_info(info)
    pattern = str(synthetic_records / "train-*")

    def first_batches():
        dataset = ip.make_train_dataset(pattern, 8, pca=pca, seed=3, deterministic=True)
        return [
            (ip.add_lighting(*images).numpy(), labels.numpy()) for images, labels in dataset.take(3)
        ]

    first, second = first_batches(), first_batches()
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        assert images_a.shape == (8, 227, 227, 3)
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(images_a, images_b)
    # Not class-ordered: a batch mixes classes.
    assert len(set(first[0][1].tolist())) > 1


def test_make_eval_dataset_pads_the_last_batch_and_covers_every_example(synthetic_records):
    info = ip.load_dataset_info(synthetic_records)
    count = info["num_examples"]["validation"]
    pattern = str(synthetic_records / "validation-*")
    batches = list(ip.make_eval_dataset(pattern, 5, num_examples=count))
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    assert all(images.shape[0] == 5 for images, _ in batches)
    assert len(labels) == count + (-count) % 5
    assert np.sum(labels != ip.PADDING_LABEL) == count
    real_counts = np.bincount(labels[labels >= 0], minlength=info["num_classes"])
    assert real_counts.tolist() == list(info["class_counts"]["validation"].values())


def test_make_eval_dataset_shards_between_input_pipelines(synthetic_records):
    info = ip.load_dataset_info(synthetic_records)
    count = info["num_examples"]["validation"]
    pattern = str(synthetic_records / "validation-*")
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        dataset = ip.make_eval_dataset(pattern, 4, input_context=context, num_examples=count)
        pipeline_images = []
        for images, labels in dataset:
            assert images.shape[0] == 2  # per-replica batch
            pipeline_images += [
                hash(image.tobytes())
                for image, label in zip(images.numpy(), labels.numpy())
                if label >= 0
            ]
        seen.append(pipeline_images)
    assert set(seen[0]).isdisjoint(seen[1])
    assert len(seen[0]) + len(seen[1]) == count


def test_missing_files_and_corrupt_records_are_named(tmp_path, synthetic_records):
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        ip.make_train_dataset(str(tmp_path / "nothing-*"), 4)
    shard = sorted(synthetic_records.glob("validation-*.tfrecord"))[0]
    good = shard.read_bytes()
    bad = tmp_path / shard.name
    bad.write_bytes(good[:100] + b"\x00garbage" + good[108:])
    dataset = ip.make_eval_dataset(str(bad), 4)
    with pytest.raises(tf.errors.DataLossError):
        for _ in dataset:
            pass
    description = ip.find_corrupt_record(str(bad))
    assert description is not None and str(bad) in description and "record 0" in description
    assert ip.find_corrupt_record(str(synthetic_records / "*.tfrecord")) is None
