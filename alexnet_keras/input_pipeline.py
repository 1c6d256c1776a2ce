"""tf.data input pipeline: parse -> preprocess (train / eval / ten-crop) -> make_train_dataset / make_eval_dataset.

Evaluation and serving images leave the pipeline as RGB float32 pixel values in [0, 255]; the
model's first layer subtracts the training-set mean. Training batches leave it as uint8 pixels
with each image's lighting shift (a quarter of the bytes to copy), made float32 on the device
by `add_lighting` inside the training step. The same functions serve training, evaluation and
the serving signature.
"""

import tensorflow as tf

from alexnet_keras_base.layout import STORED_SIZE, DataDir, Feature

CROP_SIZE = 227  # the network's input
PCA_NOISE_STD = 0.1  # alpha_i ~ N(0, 0.1) (paper section 4.1)
# The accurate integer DCT, as Pillow and libjpeg decode by default: TensorFlow's default fast
# DCT shifts red and blue by about -1 on average, which would make training pixels disagree
# with the converter's statistics.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
PADDING_LABEL = -1  # marks the examples added to complete the last evaluation batch

FEATURES = {
    Feature.ENCODED: tf.io.FixedLenFeature([], tf.string),
    Feature.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


class PCALighting:
    """The eigenpairs of the training set's RGB covariance (pixel values scaled to [0, 1])."""

    def __init__(self, eigenvalues, eigenvectors, std=PCA_NOISE_STD):
        self.eigenvalues = tf.constant(eigenvalues, tf.float32)  # (3,)
        # Columns are the eigenvectors p_1, p_2, p_3.
        self.eigenvectors = tf.transpose(tf.constant(eigenvectors, tf.float32))  # (3, 3)
        self.std = float(std)

    @classmethod
    def from_dataset_info(cls, dataset_info, std=PCA_NOISE_STD):
        return cls(dataset_info["rgb_eigenvalues"], dataset_info["rgb_eigenvectors"], std)

    def shift(self, alphas):
        """RGB shift on the 0-255 scale, 255 * [p1 p2 p3] (alpha_i * lambda_i), for alphas
        of shape (..., 3)."""
        return 255.0 * tf.linalg.matvec(self.eigenvectors, alphas * self.eigenvalues)


def load_dataset_info(data_dir):
    """Reads `dataset.json` written by the converter."""
    return DataDir(data_dir).read_info()


def readable_class_names(dataset_info):
    """The classes' readable names (the converter's --class_names), else their folder names
    (labels.txt)."""
    return dataset_info.get("readable_class_names") or dataset_info["class_names"]


# === Parsing and decoding ===


def parse_example(serialized):
    """A serialized tf.train.Example -> (encoded image bytes, int32 label)."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    return features[Feature.ENCODED], tf.cast(features[Feature.LABEL], tf.int32)


def decode_image(image_bytes):
    """JPEG / PNG / GIF / BMP bytes -> uint8 (height, width, 3)."""
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def resize_and_center_crop(image, size=STORED_SIZE):
    """Rescales the shorter side to `size` and keeps the central size x size square, as the
    converter does; a no-op for images already size x size."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def rescale():
        shorter = tf.minimum(height, width)
        crop_top, crop_left = (height - shorter) // 2, (width - shorter) // 2
        square = tf.image.crop_to_bounding_box(image, crop_top, crop_left, shorter, shorter)
        resized = tf.image.resize(square, (size, size), method="bicubic", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    already = tf.logical_and(tf.equal(height, size), tf.equal(width, size))
    return tf.cond(already, lambda: image, rescale)


def decode_stored_size(image_bytes):
    """Image bytes -> uint8 (256, 256, 3), as the converter stores every image."""
    return resize_and_center_crop(decode_image(image_bytes))


# === Preprocessing ===


def preprocess_for_train(image_bytes, seed, pca=None, crop_size=CROP_SIZE):
    """Random crop_size crop of the 256x256 image, random horizontal flip and PCA lighting
    noise, all drawn from the stateless `seed` (shape (2,) int). -> float32 in [0, 255]."""
    image, alphas = random_crop_and_flip(image_bytes, seed, crop_size)
    return apply_lighting(image, alphas, pca)


def random_crop_and_flip(image_bytes, seed, crop_size=CROP_SIZE):
    """The per-image, uint8 part of `preprocess_for_train`: -> (uint8 crop, lighting alphas
    ~ N(0, 1), to be scaled by the noise std in `apply_lighting`)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    top, left = tf.unstack(
        tf.random.stateless_uniform(
            (2,), seed=seeds[0], maxval=STORED_SIZE - crop_size + 1, dtype=tf.int32
        )
    )

    def crop_while_decoding():
        # Decodes only the crop: the JPEG records the converter writes are all 256x256.
        window = tf.stack([top, left, crop_size, crop_size])
        return tf.io.decode_and_crop_jpeg(
            image_bytes, window, channels=3, dct_method=JPEG_DCT_METHOD
        )

    def decode_then_crop():
        image = decode_stored_size(image_bytes)
        return tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)

    image = tf.cond(_is_stored_size_jpeg(image_bytes), crop_while_decoding, decode_then_crop)
    image.set_shape([crop_size, crop_size, 3])
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return image, tf.random.stateless_normal((3,), seed=seeds[2])


def apply_lighting(images, alphas, pca=None):
    """uint8 images (..., height, width, 3) and alphas (..., 3) -> float32 in [0, 255] with
    the PCA lighting shift of each image added. Works on one image or on a batch."""
    if pca is None:
        return tf.cast(images, tf.float32)
    return add_lighting(images, lighting_shift(alphas, pca))


def lighting_shift(alphas, pca=None):
    """Alphas ~ N(0, 1) (..., 3) -> each image's RGB shift on the 0-255 scale (..., 3);
    zeros without `pca`."""
    alphas = tf.convert_to_tensor(alphas, tf.float32)
    return tf.zeros_like(alphas) if pca is None else pca.shift(alphas * pca.std)


def add_lighting(images, rgb_shift):
    """uint8 images (..., height, width, 3) and RGB shifts (..., 3) -> float32 in [0, 255].
    The training step runs it on the device, on the uint8 batches the pipeline hands out."""
    images = tf.cast(images, tf.float32)
    return tf.clip_by_value(images + rgb_shift[..., tf.newaxis, tf.newaxis, :], 0.0, 255.0)


def _is_stored_size_jpeg(image_bytes):
    def has_stored_size():
        shape = tf.io.extract_jpeg_shape(image_bytes)
        return tf.logical_and(tf.equal(shape[0], STORED_SIZE), tf.equal(shape[1], STORED_SIZE))

    return tf.cond(tf.io.is_jpeg(image_bytes), has_stored_size, lambda: tf.constant(False))


def preprocess_for_eval(image_bytes, crop_size=CROP_SIZE):
    """Central crop_size crop of the 256x256 image (any image is first rescaled and
    centre-cropped to 256x256 as the converter does). -> float32 in [0, 255]."""
    image = decode_stored_size(image_bytes)
    offset = (STORED_SIZE - crop_size) // 2
    image = tf.image.crop_to_bounding_box(image, offset, offset, crop_size, crop_size)
    return tf.cast(image, tf.float32)


def ten_crop(image_bytes, crop_size=CROP_SIZE):
    """The paper's test-time patches: four corners and the centre, and their mirrors.
    -> float32 (10, crop_size, crop_size, 3), the five crops first, then their mirrors."""
    image = tf.cast(decode_stored_size(image_bytes), tf.float32)
    far = STORED_SIZE - crop_size
    center = far // 2
    offsets = [(0, 0), (0, far), (far, 0), (far, far), (center, center)]
    crops = tf.stack(
        [
            tf.image.crop_to_bounding_box(image, top, left, crop_size, crop_size)
            for top, left in offsets
        ]
    )
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


# === Datasets ===


def list_shards(file_pattern):
    """Sorted shard paths matching `file_pattern`; a clear error when there are none."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern}")
    return files


def make_train_dataset(
    file_pattern,
    global_batch_size,
    input_context=None,
    pca=None,
    shuffle_buffer=10_000,
    seed=0,
    deterministic=False,
):
    """Training batches from TFRecord shards: endless (repeat), shuffled, augmented,
    `drop_remainder`, so every replica of every worker sees the same number of steps. The
    images are a pair (uint8 crops (batch, 227, 227, 3), RGB lighting shifts (batch, 3)) that
    `add_lighting` turns into float32 pixels (the training step does, on the device).

    Under tf.distribute, pass the `tf.distribute.InputContext`: the batch is then the
    per-replica batch and the data is sharded among the input pipelines, by file when there
    are at least as many files as pipelines, else by example.
    """
    files = list_shards(file_pattern)
    num_pipelines, pipeline_index, batch_size = _pipeline_slot(input_context, global_batch_size)
    by_file = len(files) >= num_pipelines
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if by_file and num_pipelines > 1:
        dataset = dataset.shard(num_pipelines, pipeline_index)
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = _interleaved_records(dataset, len(files), deterministic)
    if not by_file and num_pipelines > 1:
        dataset = dataset.shard(num_pipelines, pipeline_index)

    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # One independent stateless seed per example: reproducible in deterministic mode. Each
    # input pipeline (one per worker) draws its own stream, so workers do not crop, flip and
    # light their images alike; the file order above stays common to all, so sharding by
    # example still splits one sequence.
    augmentation_seed = seed + pipeline_index * 2**32
    seeds = tf.data.Dataset.random(seed=augmentation_seed).batch(2, drop_remainder=True)
    dataset = tf.data.Dataset.zip((dataset, seeds))
    dataset = dataset.map(
        _train_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    # The images stay uint8 to the device (a quarter of the bytes of float32 to copy and hand
    # over); only each image's lighting shift (3 floats) is computed here.
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(
        lambda images, alphas, labels: ((images, lighting_shift(alphas, pca)), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    return _finished(dataset, deterministic)


def make_eval_dataset(
    file_pattern, global_batch_size, input_context=None, num_examples=None, ten_crops=False
):
    """Evaluation batches from TFRecord shards: one pass in file order, the central crop (or
    with `ten_crops`, (batch, 10, 227, 227, 3) images). When `num_examples` is given the last
    batch is completed with images labelled PADDING_LABEL, so every replica has a full batch
    (needed under MultiWorkerMirroredStrategy); drop them with `labels != PADDING_LABEL`.
    Under tf.distribute, pass the `tf.distribute.InputContext` (see make_train_dataset)."""
    files = list_shards(file_pattern)
    num_pipelines, pipeline_index, batch_size = _pipeline_slot(input_context, global_batch_size)
    dataset = _interleaved_records(tf.data.Dataset.from_tensor_slices(files), len(files), True)
    preprocess = ten_crop if ten_crops else preprocess_for_eval
    dataset = dataset.map(
        lambda record: _eval_example(record, preprocess),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if num_examples is not None:
        dataset = _pad_to_full_batches(dataset, num_examples, global_batch_size, ten_crops)
        if num_pipelines > 1:
            dataset = dataset.shard(num_pipelines, pipeline_index)
    dataset = dataset.batch(batch_size, drop_remainder=num_examples is not None)
    return _finished(dataset, deterministic=True)


def _pipeline_slot(input_context, global_batch_size):
    """(input pipelines, this pipeline's index, its batch size) under tf.distribute, or one
    pipeline with the whole batch without it."""
    if input_context is None:
        return 1, 0, global_batch_size
    return (
        input_context.num_input_pipelines,
        input_context.input_pipeline_id,
        input_context.get_per_replica_batch_size(global_batch_size),
    )


def _interleaved_records(files, num_files, deterministic):
    """The records of a dataset of shard names, up to 16 shards read in parallel."""
    return files.interleave(
        _read_records,
        cycle_length=min(num_files, 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _finished(dataset, deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    # Sharding is done above; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _read_records(filename):
    return tf.data.TFRecordDataset(filename)


def _train_example(record, seed):
    image_bytes, label = parse_example(record)
    image, alphas = random_crop_and_flip(image_bytes, seed)
    return image, alphas, label


def _eval_example(record, preprocess):
    image_bytes, label = parse_example(record)
    return preprocess(image_bytes), label


def find_corrupt_record(file_pattern):
    """Scans the shards and describes the first unreadable record, naming its file; None if
    all records read and parse. tf.data's own errors do not say which file was bad."""
    for filename in list_shards(file_pattern):
        index = 0
        try:
            for index, record in enumerate(tf.data.TFRecordDataset(filename)):
                image_bytes, _ = parse_example(record)
                decode_image(image_bytes)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            reason = error.message.splitlines()[0] if error.message else type(error).__name__
            return f"{filename}: record {index}: {reason}"
    return None


def _pad_to_full_batches(dataset, num_examples, global_batch_size, ten_crops):
    padding = (-num_examples) % global_batch_size
    if padding == 0:
        return dataset.take(num_examples)
    shape = (10, CROP_SIZE, CROP_SIZE, 3) if ten_crops else (CROP_SIZE, CROP_SIZE, 3)
    filler = tf.data.Dataset.from_tensors(
        (tf.zeros(shape, tf.float32), tf.constant(PADDING_LABEL, tf.int32))
    ).repeat(padding)
    return dataset.take(num_examples).concatenate(filler)
