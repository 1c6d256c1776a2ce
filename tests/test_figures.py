"""The paper's figures: the conv1 kernel grid read back from its PNG, the group split checked
against conv2's computation, the blocked search against brute force and within a memory
bound, nearest neighbours on data with known duplicates, the TensorBoard image, bad usage."""

import json
import shutil
import subprocess
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_keras import (
    build_alexnet,
    feature_cache,
    input_pipeline,
    kernel_figure,
    mean_layer,
    neighbour_figure,
    serving,
)
from alexnet_keras.synthetic import CLASS_NAMES, make_synthetic_dataset
from alexnet_keras_cli import evaluate
from commands import run_main
from small_models import small_alexnet


def tiny_model(seed=4):
    return small_alexnet(4, seed)


def mark_kernels(model):
    """Sets conv1 kernel c to zero but for one pixel, at (c // 11, c % 11), in colour channel
    c % 3: after scaling to its own range, tile c is black with one pure red, green or blue
    pixel that names c."""
    conv1 = model.get_layer("conv1")
    kernel = np.zeros(conv1.kernel.shape, np.float32)
    for channel in range(kernel.shape[-1]):
        kernel[channel // 11, channel % 11, channel % 3, channel] = 0.5
    conv1.kernel.assign(kernel)


def read_tile(pixels, scale):
    """The channel a marked tile names, from its pixels."""
    small = pixels[::scale, ::scale].astype(int)  # (11, 11, 3)
    bright = np.argwhere(small.max(axis=-1) > 200)
    assert len(bright) == 1, bright
    row, column = bright[0]
    colour = int(np.argmax(small[row, column]))
    assert small[row, column, colour] == 255 and small[row, column].sum() == 255
    channel = 11 * row + column
    assert channel % 3 == colour
    return channel


def conv2_groups_reading(model, channel):
    """Which of conv2's output channels change when only conv1 channel `channel` is on."""
    conv2 = model.get_layer("conv2")
    inputs = np.zeros((1, 5, 5, conv2.kernel.shape[-2] * conv2.groups), np.float32)
    base = conv2(inputs).numpy()
    inputs[..., channel] = 1.0
    return np.flatnonzero(np.abs(conv2(inputs).numpy() - base).max(axis=(0, 1, 2)) > 0)


@pytest.mark.parametrize("width_multiplier, tiles", [(1.0, 96), (0.125, 12)])
def test_the_kernel_grid_shows_every_kernel_in_channel_order_split_by_conv2_groups(
    tmp_path, width_multiplier, tiles
):
    model = build_alexnet(num_classes=4, width_multiplier=width_multiplier)
    mark_kernels(model)
    grid = kernel_figure.write_kernel_figure(model, tmp_path / kernel_figure.KERNELS_FILE)
    assert len(grid.tile_origins) == tiles
    size = grid.tile_size
    assert size >= 33
    with Image.open(tmp_path / kernel_figure.KERNELS_FILE) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > grid.image.shape[0] + 40  # room for the caption
    assert pixels.shape[1] >= grid.image.shape[1]
    # The tiles, read from the PNG in reading order (top to bottom, left to right), name the
    # channels 0, 1, 2, ...
    origins = [
        (top + kernel_figure.MARGIN, left + kernel_figure.MARGIN) for top, left in grid.tile_origins
    ]
    reading_order = sorted(range(tiles), key=lambda channel: origins[channel])
    assert [
        read_tile(pixels[top : top + size, left : left + size], kernel_figure.KERNEL_TILE_SCALE)
        for top, left in (origins[channel] for channel in reading_order)
    ] == list(range(tiles))
    # Tiles do not overlap: distinct rows are at least a tile apart, and so are columns.
    for first, second in zip(sorted(origins), sorted(origins)[1:]):
        assert second[0] >= first[0] + size or second[1] >= first[1] + size
    # The split: conv2's first group reads channels [0, tiles / 2), its second group the rest;
    # the first half's tiles all lie above a blank band, the second half's below it.
    half = tiles // 2
    assert grid.groups == [(0, half), (half, tiles)]
    outputs = model.get_layer("conv2").filters
    for channel in (0, half - 1, half, tiles - 1):
        reading = conv2_groups_reading(model, channel)
        expected_group = range(0, outputs // 2) if channel < half else range(outputs // 2, outputs)
        assert len(reading) and set(reading) <= set(expected_group), (channel, reading)
    first_bottom = max(top for top, _ in origins[:half]) + size
    second_top = min(top for top, _ in origins[half:])
    assert second_top - first_bottom >= kernel_figure.GROUP_GAP
    band = pixels[first_bottom:second_top]
    assert (band == kernel_figure.BACKGROUND).all()
    if tiles == 96:  # the paper's layout: 3 rows of 16 per group
        assert len({top for top, _ in origins[:half]}) == 3
        assert len({left for _, left in origins}) == 16


def test_colour_share_separates_grey_from_colour_kernels():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(11, 11))
    kernel = np.zeros((11, 11, 3, 3))
    kernel[..., 0] = pattern[..., None]  # the same pattern in R, G and B
    kernel[..., 1] = np.stack([pattern, -pattern, 0 * pattern], axis=-1)  # red against green
    kernel[..., 2] = rng.normal(size=(11, 11, 3))
    shares = kernel_figure.colour_share(kernel)
    assert shares[0] == pytest.approx(0.0, abs=1e-12)
    assert shares[1] == pytest.approx(1.0)
    assert 0.4 < shares[2] < 0.9  # independent channels: about 2/3 of the variance


def test_the_tensorboard_image_is_the_kernel_grid(tmp_path):
    model = tiny_model()
    writer = tf.summary.create_file_writer(str(tmp_path))
    grid = kernel_figure.log_conv1_kernels(model, writer, step=7)
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    logged = []
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            if value.tag == "conv1_kernels":
                width, height, png = tf.make_ndarray(value.tensor)
                logged.append(
                    (
                        event.step,
                        int(width),
                        int(height),
                        tf.io.decode_png(png).numpy(),
                        value.metadata.summary_description,
                    )
                )
    assert len(logged) == 1
    step, width, height, image, description = logged[0]
    assert step == 7 and (height, width) == grid.image.shape[:2]
    np.testing.assert_array_equal(image, grid.image)
    assert "conv2's group 1" in description


def brute_force(queries, features, count):
    distances = np.linalg.norm(
        np.asarray(features, np.float64)[None] - np.asarray(queries, np.float64)[:, None], axis=-1
    )
    order = np.argsort(distances, axis=1, kind="stable")[:, :count]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("block_rows", [1, 64, 1000, 5000])
def test_the_blocked_search_equals_brute_force(tmp_path, block_rows):
    rng = np.random.default_rng(block_rows)
    features = rng.normal(size=(1000, 24)).astype(np.float16)
    features[700] = features[30]  # a tie: the lower row comes first
    queries = rng.normal(size=(5, 24)).astype(np.float16)
    queries[2] = features[30] + np.float16(0.01)
    path = tmp_path / "features.npy"
    np.save(path, features)
    indices, distances = neighbour_figure.nearest_neighbours(
        queries, path, count=6, block_rows=block_rows
    )
    expected_indices, expected_distances = brute_force(queries, features, 6)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-9, atol=1e-9)
    assert list(indices[2, :2]) == [30, 700]


def test_the_search_holds_one_block_not_the_file(tmp_path, python, repo_root):
    """ImageNet's 1,281,167 training rows (with 64 dimensions, not 4096, to keep the test
    small): the peak resident memory during the search grows by about one block, far less
    than the 164 MB file."""
    rows, dimension = 1_281_167, 64
    path = tmp_path / "features.npy"
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dimension))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 200_000):
        stop = min(start + 200_000, rows)
        features[start:stop] = rng.normal(size=(stop - start, dimension))
    features.flush()
    del features
    file_megabytes = path.stat().st_size / 2**20
    script = textwrap.dedent(f"""
        import json, pathlib, numpy as np
        from alexnet_keras import neighbour_figure

        def resident(field):
            for line in pathlib.Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) / 1024

        queries = np.ones((6, {dimension}), np.float16)
        neighbour_figure.nearest_neighbours(queries, {str(path)!r}, block_rows=1024)  # warm up
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
        before = resident("VmRSS")
        indices, _ = neighbour_figure.nearest_neighbours(queries, {str(path)!r})
        print(json.dumps({{"growth": resident("VmHWM") - before, "rows": int(indices.max())}}))
    """)
    result = subprocess.run(
        [python, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.splitlines()[-1])
    block_megabytes = neighbour_figure.SEARCH_BLOCK_ROWS * dimension * (2 + 8 + 8) / 2**20
    assert file_megabytes > 150
    assert measured["growth"] < 3 * block_megabytes + 16, (measured, block_megabytes)


DUPLICATED_CLASSES = CLASS_NAMES[:3]


@pytest.fixture(scope="module")
def duplicated_records(tmp_path_factory):
    """Real converted records, 4 classes; the validation images of DUPLICATED_CLASSES also
    appear in the training split under dup_<name>, so their nearest training image is known."""
    from alexnet_keras.tfrecords import ConvertOptions, convert

    root = tmp_path_factory.mktemp("duplicates")
    make_synthetic_dataset(root / "drawn", num_classes=4, images_per_class=8, seed=3)
    for name in CLASS_NAMES[:4]:
        (root / "images" / "train" / name).mkdir(parents=True)
        (root / "images" / "val" / name).mkdir(parents=True)
        for path in sorted((root / "drawn" / name).glob("*.jpg")):
            index = int(path.stem.rsplit("_", 1)[1])
            split = "val" if index >= 6 else "train"
            shutil.copy(path, root / "images" / split / name / path.name)
            if split == "val" and name in DUPLICATED_CLASSES:
                shutil.copy(path, root / "images" / "train" / name / f"dup_{path.name}")
    convert(
        root / "images",
        root / "records",
        ConvertOptions(num_shards=3, workers=1),
        log=lambda message: None,
    )
    return root / "records"


@pytest.fixture(scope="module")
def tiny_model_file(duplicated_records, tmp_path_factory):
    model = tiny_model()
    mean_layer(model).set_mean(input_pipeline.load_dataset_info(duplicated_records)["rgb_mean"])
    path = tmp_path_factory.mktemp("model") / "alexnet.keras"
    model.save(path)
    return path


def record_bytes(records, filename):
    for split in ("train", "validation"):
        for record in tf.data.TFRecordDataset(sorted(map(str, records.glob(f"{split}-*")))):
            example = tf.train.Example.FromString(record.numpy())
            feature = example.features.feature
            if feature["image/filename"].bytes_list.value[0].decode() == filename:
                return feature["image/encoded"].bytes_list.value[0]
    raise AssertionError(f"{filename} not in {records}")


def test_evaluate_figures_finds_the_duplicates(
    duplicated_records, tiny_model_file, tmp_path, python, repo_root
):
    output = tmp_path / "report"
    result = subprocess.run(
        [
            python,
            "evaluate.py",
            "--no_progress",
            "--figures",
            "--model",
            tiny_model_file,
            "--data_dir",
            duplicated_records,
            "--output_dir",
            output,
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "figures:" in result.stdout
    info = input_pipeline.load_dataset_info(duplicated_records)
    report = json.loads((output / neighbour_figure.NEIGHBOURS_JSON).read_text())
    queries = report["queries"]
    assert len(queries) == neighbour_figure.NUM_QUERIES
    assert {query["class"] for query in queries} == set(info["class_names"])
    duplicated = 0
    for query in queries:
        neighbours = query["neighbours"]
        assert len(neighbours) == neighbour_figure.NUM_NEIGHBOURS
        assert all(neighbour["split"] == "train" for neighbour in neighbours)
        distances = [neighbour["distance"] for neighbour in neighbours]
        assert distances == sorted(distances)
        folder, name = query["filename"].split("/")[-2:]
        if folder in DUPLICATED_CLASSES:  # its copy is in the training split
            duplicated += 1
            assert neighbours[0]["filename"] == f"train/{folder}/dup_{name}"
            assert neighbours[0]["distance"] < 1e-3
            assert neighbours[1]["distance"] > 1e-2  # the features tell images apart
        else:
            assert neighbours[0]["distance"] > 1e-2
    assert duplicated >= 3
    # A distance recomputed here, from the records, with the fc7 extractor of the brief.
    model = keras.models.load_model(tiny_model_file)
    extractor = keras.Model(model.input, model.get_layer("fc7").output)
    query, neighbour = queries[-1], queries[-1]["neighbours"][1]
    images = tf.stack(
        [
            input_pipeline.preprocess_for_eval(record_bytes(duplicated_records, name))
            for name in (query["filename"], neighbour["filename"])
        ]
    )
    fc7 = extractor(images, training=False).numpy().astype(np.float16).astype(np.float64)
    assert np.linalg.norm(fc7[0] - fc7[1]) == pytest.approx(neighbour["distance"], rel=1e-6)
    # The cache: one float16 row per training image.
    features = np.load(output / feature_cache.FEATURES_FILE, mmap_mode="r")
    assert features.dtype == np.float16
    assert features.shape == (info["num_examples"]["train"], model.get_layer("fc7").units)
    # The PNGs.
    with Image.open(output / neighbour_figure.NEIGHBOURS_FILE) as image:
        image.verify()
        assert image.format == "PNG"
        assert image.size == neighbour_figure.neighbour_figure_size(neighbour_figure.NUM_QUERIES)
    with Image.open(output / kernel_figure.KERNELS_FILE) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 6 * 33 and image.size[1] >= 2 * 33


def test_the_fc7_cache_is_reused_only_for_the_same_model_and_data(duplicated_records, tmp_path):
    messages = []
    model = tiny_model(seed=4)
    path, first = feature_cache.train_features(
        model, duplicated_records, tmp_path, log=messages.append
    )
    written = path.stat().st_mtime_ns
    original = np.load(path)
    _, again = feature_cache.train_features(
        model, duplicated_records, tmp_path, log=messages.append
    )
    assert messages[-1].startswith("reusing") and path.stat().st_mtime_ns == written
    np.testing.assert_array_equal(again.labels, first.labels)
    # Another model: computed again, different features.
    feature_cache.train_features(
        tiny_model(seed=5), duplicated_records, tmp_path, log=messages.append
    )
    assert messages[-1].startswith("computing")
    assert not np.array_equal(np.load(path), original)
    # A cache whose info file is missing (a crash before it was written) is not reused, and
    # the temporary file of a killed run (its process gone) is removed.
    (tmp_path / feature_cache.FEATURES_INFO_FILE).unlink()
    abandoned = tmp_path / ".fc7_train.tmp-999999999.npy"
    abandoned.write_bytes(b"half a file")
    feature_cache.train_features(
        tiny_model(seed=5), duplicated_records, tmp_path, log=messages.append
    )
    assert messages[-1].startswith("computing")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    # Rows follow the records: row i's label is the i-th training record's.
    labels = [
        int(input_pipeline.parse_example(record)[1])
        for record in tf.data.TFRecordDataset(sorted(map(str, duplicated_records.glob("train-*"))))
    ]
    assert sorted(labels) == sorted(first.labels.tolist())
    assert sorted(zip(first.shard.tolist(), first.position.tolist())) == [
        (shard, position)
        for shard in range(len(first.files))
        for position in range(int((first.shard == shard).sum()))
    ]


def test_queries_cover_the_classes_and_depend_on_the_seed():
    labels = np.repeat(np.arange(4), 10)
    chosen = neighbour_figure.choose_queries(labels, seed=1)
    assert len(set(chosen)) == 6 and set(labels[chosen]) == {0, 1, 2, 3}
    assert neighbour_figure.choose_queries(labels, seed=1) == chosen
    many = np.repeat(np.arange(1000), 3)
    picked = neighbour_figure.choose_queries(many, seed=2)
    assert len(set(many[picked])) == 6  # six different classes
    assert picked != neighbour_figure.choose_queries(many, seed=3)


def test_bad_usage_gets_a_message_and_no_traceback(tiny_model_file, duplicated_records, tmp_path):
    info = input_pipeline.load_dataset_info(duplicated_records)
    export = serving.export_model(
        keras.models.load_model(tiny_model_file),
        tmp_path / "exports",
        info["class_names"],
        log=lambda message: None,
    )
    cases = [
        (["--model", export], 2, "is an exported SavedModel"),
        (
            ["--model", tiny_model_file, "--report", tmp_path / "report.json"],
            2,
            "use --output_dir, not --report",
        ),
    ]
    for arguments, status, message in cases:
        result = run_main(
            evaluate.main,
            "--no_progress",
            "--figures",
            "--data_dir",
            duplicated_records,
            *arguments,
        )
        assert result.returncode == status, (arguments, result.stderr[-2000:])
        assert message in result.stderr, (message, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
