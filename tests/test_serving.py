"""The export, served the way TensorFlow Serving serves it: every request goes through
TensorFlow's C++ `LoadSavedModel` in a process of its own (tf_serving_standin.py)."""

import http.server
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

import alexnet_keras
from alexnet_keras import image_headers, serving
from alexnet_keras_base.layout import DataDir, ExportBase, Feature
from alexnet_keras_cli import export_model
from commands import run_main, start_script
from small_models import saved_small_alexnet, written_labels
from tf_serving_standin import (
    classification,
    classify_inputs,
    classify_request,
    rest_body_to_tensors,
    rest_classify_request,
    rest_classify_response,
    rest_response,
    run_signature,
    run_signatures,
)

NUM_CLASSES = 10
LABELS = [
    "circle",
    "square",
    "crème brûlée",
    "star",
    "cross",
    "ring",
    "stripes",
    "checkerboard",
    "crescent",
    "dots",
]
GIB = 1024**3


def save_model(path, seed=7, policy="float32"):
    """A small AlexNet with every layer of the paper's, saved as a .keras file."""
    keras.config.set_dtype_policy(policy)
    try:
        saved_small_alexnet(path, NUM_CLASSES, seed)
    finally:
        keras.config.set_dtype_policy("float32")
    return path


def run_export(python, repo_root, *arguments):
    return subprocess.run(
        [python, "export/export_model.py", *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "alexnet.keras")


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    return written_labels(tmp_path_factory.mktemp("labels") / "labels.txt", LABELS)


@pytest.fixture(scope="module")
def export_dir(model_file, labels_file, tmp_path_factory, python, repo_root):
    base = tmp_path_factory.mktemp("exports") / "alexnet"
    result = run_export(
        python, repo_root, "--model", model_file, "--export_base", base, "--labels", labels_file
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"to {base / '1'}" in result.stdout
    return base / "1"


def encoded(image_format, size=(320, 240), seed=0, **options):
    """A picture with structure at several scales (not noise), encoded in `image_format`."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[np.newaxis], (height, width), method="bicubic")[0].numpy()
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    files = {
        "photo.jpg": encoded("JPEG", (500, 375), seed=1, quality=90),
        "drawing.png": encoded("PNG", (300, 400), seed=2),
        "square.jpg": encoded("JPEG", (256, 256), seed=3),
        "first_frame.gif": encoded("GIF", (260, 260), seed=4),
        "bitmap.bmp": encoded("BMP", (240, 250), seed=5),
        "lossy.webp": encoded("WEBP", (300, 300), seed=6),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def keras_reference(model_file, images):
    """(probabilities, top-5 classes) of load_model + preprocess_for_eval: what a
    downstream Keras app computes."""
    model = keras.models.load_model(model_file)
    pixels = tf.stack([alexnet_keras.preprocess_for_eval(tf.constant(data)) for data in images])
    probabilities = tf.nn.softmax(model(pixels, training=False)).numpy()
    return probabilities, np.argsort(-probabilities, axis=1)[:, :5]


def readme_rest_body(repo_root, image_path, signature=None):
    """The REST body exactly as docs/serving.md's curl command builds it, for `image_path`;
    with `signature`, the command that names that signature."""
    readme = (repo_root / "docs" / "serving.md").read_text()
    start = (
        r'\{\\"instances\\"'
        if signature is None
        else rf'\{{\\"signature_name\\": \\"{signature}\\"'
    )
    template = re.search(rf'-d ("{start}.*?")\n', readme).group(1)
    result = subprocess.run(
        ["bash", "-c", f'printf "%s" {template.replace("cat.jpg", image_path.name)}'],
        cwd=image_path.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_serving_default_answers_readme_rest_bodies_like_keras(
    export_dir, model_file, image_files, runner, repo_root
):
    for name, path in image_files.items():
        body = readme_rest_body(repo_root, path)
        signature, inputs = rest_body_to_tensors(body, {"image_bytes": tf.string})
        answer = run_signature(runner, export_dir, signature, inputs)
        assert answer.ok, (name, answer.status)
        probabilities, top5 = keras_reference(model_file, [path.read_bytes()])
        assert answer.outputs["probabilities"].dtype == np.float32
        np.testing.assert_allclose(answer.outputs["probabilities"], probabilities, atol=1e-5)
        assert answer.outputs["top_k_classes"].tolist() == top5.tolist(), name
        assert answer.outputs["top_k_classes"].dtype == np.int32
        assert [label.decode() for label in answer.outputs["top_k_labels"][0]] == [
            LABELS[index] for index in top5[0]
        ]
        np.testing.assert_allclose(
            answer.outputs["top_k_scores"][0], probabilities[0][top5[0]], atol=1e-5
        )


def test_a_batch_and_the_pixel_signature_agree_with_keras(
    export_dir, model_file, image_files, runner
):
    images = [path.read_bytes() for path in image_files.values()]
    probabilities, top5 = keras_reference(model_file, images)
    # The predictions must differ between images, or the comparison proves little.
    assert len({tuple(row) for row in top5.tolist()}) > 1

    batch = run_signature(
        runner,
        export_dir,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)},
    )
    assert batch.ok, batch.status
    assert batch.outputs["top_k_classes"].tolist() == top5.tolist()

    pixels = np.stack(
        [alexnet_keras.preprocess_for_eval(tf.constant(data)).numpy() for data in images]
    )
    direct = run_signature(runner, export_dir, "predict_pixels", {"images": pixels})
    assert direct.ok, direct.status
    np.testing.assert_allclose(direct.outputs["probabilities"], probabilities, atol=1e-5)
    assert direct.outputs["top_k_classes"].tolist() == top5.tolist()


def fc7_reference(model_file, images):
    """fc7 of load_model + preprocess_for_eval, as a downstream Keras app reads it."""
    model = keras.models.load_model(model_file)
    pixels = tf.stack([alexnet_keras.preprocess_for_eval(tf.constant(data)) for data in images])
    fc7_model = keras.Model(model.inputs, model.get_layer("fc7").output)
    return fc7_model(pixels, training=False).numpy()


def test_the_features_signature_answers_fc7_and_the_classes_of_serving_default(
    export_dir, model_file, image_files, runner
):
    images = [path.read_bytes() for path in image_files.values()]
    request = {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)}
    features, default = run_signatures(
        runner, export_dir, [("features", request), ("serving_default", request)]
    )
    assert features.ok, features.status
    expected = fc7_reference(model_file, images)
    # Zeros and positive values in every row (after the ReLU), and rows that differ: a
    # comparison that can tell fc7 from another layer or from a batch of one image.
    assert (expected > 0).any(axis=1).all() and (expected == 0).any(axis=1).all()
    assert len({row.tobytes() for row in expected}) == len(images)
    fc7 = features.outputs["fc7"]
    assert fc7.dtype == np.float32
    assert fc7.shape == (len(images), alexnet_keras.model.layer_widths(0.125)["fc7"])
    np.testing.assert_allclose(fc7, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    assert default.ok, default.status
    assert set(features.outputs) == set(default.outputs) | {"fc7"}
    for name, value in default.outputs.items():
        if value.dtype == np.float32:
            np.testing.assert_allclose(features.outputs[name], value, rtol=1e-6, atol=1e-7)
        else:
            assert features.outputs[name].tolist() == value.tolist(), name


@pytest.mark.parametrize(
    "case,message",
    [
        ("good_and_bad_in_one_batch", "not a JPEG, PNG, GIF, BMP or WebP image"),
        ("oversize", "image of 12000 x 12000 pixels is above the limit of this export"),
    ],
)
def test_bad_images_fail_the_features_signature_like_serving_default(
    case, message, export_dir, image_files, runner, request
):
    good = image_files["photo.jpg"].read_bytes()
    images = (
        [good, b"GIF? no", good]
        if case == "good_and_bad_in_one_batch"
        else [request.getfixturevalue("oversize_jpeg").read_bytes()]
    )
    inputs = {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)}
    signatures = ("features", "serving_default")
    answers = run_signatures(runner, export_dir, [(name, inputs) for name in signatures])
    for signature, answer in zip(signatures, answers):
        assert answer.code == "INVALID_ARGUMENT", (signature, answer.status)
        assert message in answer.status, signature
        assert answer.outputs == {}


def test_the_export_info_lists_the_signatures_of_the_saved_model(export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString(
        (export_dir / ExportBase.SAVED_MODEL).read_bytes()
    )
    (meta_graph,) = saved_model.meta_graphs
    # Names with two underscores are TensorFlow's own (its init op), not signatures.
    signatures = {name for name in meta_graph.signature_def if not name.startswith("__")}
    info = json.loads((export_dir / ExportBase.EXTRA / ExportBase.INFO).read_text())
    assert sorted(info["signatures"]) == sorted(signatures)
    assert {"serving_default", "predict_pixels", "features", "classify"} <= signatures
    # TF Serving's Classify API takes a signature of this method, input and outputs only.
    classify_signature = meta_graph.signature_def["classify"]
    assert classify_signature.method_name == "tensorflow/serving/classify"
    assert set(classify_signature.inputs) == {"inputs"}
    assert set(classify_signature.outputs) == {"classes", "scores"}
    for name in signatures - {"classify"}:
        assert meta_graph.signature_def[name].method_name == "tensorflow/serving/predict"
    features = meta_graph.signature_def["features"]
    assert set(features.inputs) == {"image_bytes"}
    assert set(features.outputs) == {
        "fc7",
        "probabilities",
        "top_k_classes",
        "top_k_labels",
        "top_k_scores",
    }


def test_a_model_without_fc7_is_refused_with_a_message():
    images = keras.Input((227, 227, 3))
    logits = keras.layers.Dense(NUM_CLASSES, name="fc8")(keras.layers.Flatten()(images))
    with pytest.raises(serving.UsageError, match="the model has no layer named fc7"):
        serving.build_export_archive(keras.Model(images, logits), LABELS)


def test_every_warmup_record_runs_through_its_signature(export_dir, runner):
    path = export_dir / ExportBase.EXTRA / ExportBase.WARMUP
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert 1 <= len(records) <= 1000  # TF Serving reads at most 1,000
    logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in records]
    requests = [
        classify_inputs(log.classify_log.request)
        if log.HasField("classify_log")
        else (
            log.predict_log.request.model_spec.signature_name,
            dict(log.predict_log.request.inputs),
        )
        for log in logs
    ]
    # As TF Serving runs them when it loads the version: one after another, in one process.
    answered = []
    for log, (signature, _), answer in zip(
        logs, requests, run_signatures(runner, export_dir, requests)
    ):
        if log.HasField("classify_log"):
            classified = classification(answer)
            assert classified.ok, classified.status
            answered.append((signature, len(classified.results)))
            continue
        assert answer.ok, answer.status
        answered.append((signature, len(answer.outputs["top_k_classes"])))
        if signature == serving.FEATURES:
            assert len(answer.outputs[serving.FC7]) == answered[-1][1]
    # Named here, not read from serving.WARMUP_SIGNATURES: a signature dropped from the
    # records must fail this test.
    assert answered == [
        (signature, batch_size)
        for signature in (serving.SERVING_DEFAULT, serving.FEATURES, "classify")
        for batch_size in serving.WARMUP_BATCH_SIZES
    ]


def truncated(data, keep=0.5):
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    "case,message",
    [
        ("empty", "empty image bytes"),
        ("not_an_image", "not a JPEG, PNG, GIF, BMP or WebP image"),
        ("truncated_jpeg", ""),
        ("truncated_png", ""),
        ("cut_in_the_header", ""),
        ("good_and_bad_in_one_batch", "not a JPEG, PNG, GIF, BMP or WebP image"),
    ],
)
def test_bad_requests_are_invalid_argument(case, message, export_dir, image_files, runner):
    good = image_files["photo.jpg"].read_bytes()
    images = {
        "empty": [b""],
        "not_an_image": [b"%PDF-1.7 this is a document, not a picture"],
        "truncated_jpeg": [truncated(good)],
        "truncated_png": [truncated(image_files["drawing.png"].read_bytes())],
        "cut_in_the_header": [good[:200]],
        "good_and_bad_in_one_batch": [good, b"GIF? no", good],
    }[case]
    answer = run_signature(
        runner,
        export_dir,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)},
    )
    assert answer.code == "INVALID_ARGUMENT", answer.status
    assert message in answer.status
    assert answer.outputs == {}


def test_non_finite_pixels_are_invalid_argument(export_dir, runner):
    pixels = np.full((1, 227, 227, 3), 100.0, np.float32)
    pixels[0, 5, 5, 1] = np.nan
    answer = run_signature(runner, export_dir, "predict_pixels", {"images": pixels})
    assert answer.code == "INVALID_ARGUMENT" and "pixel values must be finite" in answer.status


def test_an_empty_batch_gets_empty_outputs(export_dir, runner):
    empty = {"image_bytes": tf.make_tensor_proto([], dtype=tf.string)}
    answer, features = run_signatures(
        runner, export_dir, [("serving_default", empty), ("features", empty)]
    )
    assert answer.ok, answer.status
    assert answer.outputs["probabilities"].shape == (0, NUM_CLASSES)
    assert answer.outputs["top_k_labels"].shape == (0, 5)
    assert features.ok, features.status
    assert features.outputs["fc7"].shape == (0, alexnet_keras.model.layer_widths(0.125)["fc7"])
    assert features.outputs["probabilities"].shape == (0, NUM_CLASSES)


@pytest.fixture(scope="module")
def oversize_jpeg(tmp_path_factory):
    """A JPEG of 12000x12000 pixels (432 MB decoded) that is only a few MB encoded."""
    path = tmp_path_factory.mktemp("oversize") / "huge.jpg"
    image = Image.new("RGB", (12000, 12000), (90, 140, 200))
    image.paste(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)),
        (500, 500),
    )
    image.save(path, "JPEG", quality=85)
    return path


def test_image_sizes_are_read_from_the_header_of_every_format():
    for image_format in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        data = encoded(image_format, (300, 200))
        height, width = (int(value) for value in image_headers.image_size_from_header(data))
        assert (height, width) == (200, 300), image_format
    for options in ({"lossless": True}, {"exif": b"Exif\x00\x00MM"}):  # VP8L, VP8X
        data = encoded("WEBP", (300, 200), **options)
        assert [int(value) for value in image_headers.image_size_from_header(data)] == [200, 300]
    assert [int(value) for value in image_headers.image_size_from_header(b"nonsense")] == [-1, -1]


@pytest.fixture(scope="module")
def permissive_export(model_file, labels_file, tmp_path_factory):
    """An export whose pixel limit admits the oversize requests below: the positive control
    that shows what they cost once decoded."""
    base = tmp_path_factory.mktemp("permissive") / "alexnet"
    result = run_main(
        export_model.main,
        "--model",
        model_file,
        "--export_base",
        base,
        "--labels",
        labels_file,
        "--max_pixels",
        1_000_000_000,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "1"


def test_an_oversize_image_is_refused_before_it_is_decoded(
    export_dir, oversize_jpeg, image_files, permissive_export, runner
):
    normal = [image_files["photo.jpg"].read_bytes()] * 8
    baseline = run_signature(
        runner,
        export_dir,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(normal, dtype=tf.string)},
    )
    assert baseline.ok, baseline.status
    huge = [oversize_jpeg.read_bytes()]
    refused = run_signature(
        runner,
        export_dir,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(huge, dtype=tf.string)},
    )
    assert refused.code == "INVALID_ARGUMENT", refused.status
    assert (
        "image of 12000 x 12000 pixels is above the limit of this export, 50000000 pixels"
        in refused.status
    )
    assert refused.peak_rss_bytes <= baseline.peak_rss_bytes + 0.3 * GIB, (
        refused.peak_rss_bytes / GIB,
        baseline.peak_rss_bytes / GIB,
    )

    # The bound can fail: an export whose limit admits the image decodes it, and its peak
    # memory is far above the baseline's.
    decoded = run_signature(
        runner,
        permissive_export,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(huge, dtype=tf.string)},
    )
    assert decoded.ok, decoded.status
    assert decoded.peak_rss_bytes > baseline.peak_rss_bytes + 0.3 * GIB


def animated_gif(frames, size, own_palettes=True, **options):
    """A GIF of `frames` (each a list of (box, palette index) rectangles on a background),
    with a palette of its own per frame (local color tables) if `own_palettes`."""
    images = []
    for index, rectangles in enumerate(frames):
        image = Image.new("P", size, 0)
        for box, color in rectangles:
            image.paste(color, box)
        shift = index if own_palettes else 0
        image.putpalette(
            [
                channel
                for value in range(256)
                for channel in (value, (value * 7 + shift) % 256, 255 - value)
            ]
        )
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def pillow_frame_pixels(data):
    """(frames, their pixels in all) as Pillow reads the image descriptors."""
    image = Image.open(io.BytesIO(data))
    pixels = 0
    for index in range(image.n_frames):
        image.seek(index)
        left, top, right, bottom = image.tile[0][1]
        pixels += (right - left) * (bottom - top)
    return image.n_frames, pixels


def test_gif_frames_are_counted_by_walking_their_blocks():
    moving_square = [[((10 * index, 5, 10 * index + 30, 35), 200)] for index in range(6)]
    gifs = {
        "one frame": encoded("GIF", (260, 260), seed=4),
        # Pillow crops each frame to what changed: frames smaller than the screen.
        "cropped frames, loop and comment extensions": animated_gif(
            moving_square,
            (120, 60),
            own_palettes=False,
            loop=0,
            duration=50,
            comment=b"several frames",
        ),
        "full frames": animated_gif(moving_square, (120, 60), optimize=False),
    }
    walk_in_graph = tf.function(image_headers.gif_frame_pixels)
    for name, data in gifs.items():
        expected = pillow_frame_pixels(data)
        assert expected[0] >= (1 if name == "one frame" else 6), name
        for walk in (image_headers.gif_frame_pixels, walk_in_graph):
            assert tuple(int(value) for value in walk(data)) == expected, name
    assert (
        pillow_frame_pixels(gifs["cropped frames, loop and comment extensions"])[1] < 6 * 120 * 60
    )  # the crop happened, so frame sizes, not the screen, were read
    for data in (b"", b"GIF89a", gifs["full frames"][:40]):  # no frame, or cut before one
        assert [int(value) for value in walk_in_graph(data)] == [0, 0]


@pytest.fixture(scope="module")
def many_frame_gif(tmp_path_factory):
    """A GIF whose 4000x4000 screen is within the limit, with 40 frames of that size that the
    decoder reads in full (640 MB) before it keeps the first; half a megabyte encoded."""
    path = tmp_path_factory.mktemp("many_frames") / "frames.gif"
    frames = [[((0, 0, 4000, 4000), index + 1)] for index in range(40)]
    path.write_bytes(animated_gif(frames, (4000, 4000), optimize=False))
    return path


def test_a_gif_of_many_frames_is_refused_before_it_is_decoded(
    export_dir, many_frame_gif, image_files, permissive_export, runner
):
    data = many_frame_gif.read_bytes()
    frames, pixels = pillow_frame_pixels(data)
    assert Image.open(many_frame_gif).size == (4000, 4000) and pixels > 4000 * 4000 * 30
    normal = [image_files["photo.jpg"].read_bytes()] * 8
    baseline = run_signature(
        runner,
        export_dir,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(normal, dtype=tf.string)},
    )
    assert baseline.ok, baseline.status
    request = {"image_bytes": tf.make_tensor_proto([data], dtype=tf.string)}
    refused = run_signature(runner, export_dir, "serving_default", request)
    assert refused.code == "INVALID_ARGUMENT", refused.status
    assert (
        f"GIF of {frames} frames with {pixels} pixels in all is above the limit of this "
        f"export, {serving.DEFAULT_MAX_PIXELS} pixels"
    ) in refused.status
    assert refused.peak_rss_bytes <= baseline.peak_rss_bytes + 0.3 * GIB, (
        refused.peak_rss_bytes / GIB,
        baseline.peak_rss_bytes / GIB,
    )
    # The positive control: admitted, the frames are all decoded.
    decoded = run_signature(runner, permissive_export, "serving_default", request)
    assert decoded.ok, decoded.status
    assert decoded.peak_rss_bytes > baseline.peak_rss_bytes + 0.3 * GIB, (
        decoded.peak_rss_bytes / GIB,
        baseline.peak_rss_bytes / GIB,
    )


def test_kill_9_during_an_export_leaves_no_version_and_versions_count_up(
    model_file, labels_file, tmp_path, python, repo_root
):
    base = tmp_path / "exports" / "alexnet"
    arguments = ["--model", model_file, "--export_base", base, "--labels", labels_file]
    process = start_script(python, repo_root, "export/export_model.py", *arguments)
    deadline = time.monotonic() + 300
    temporaries = []
    while not temporaries and process.poll() is None and time.monotonic() < deadline:
        temporaries = list(base.parent.glob(".alexnet.tmp-*"))
        time.sleep(0.01)
    assert temporaries, "the export finished or failed before a temporary folder appeared"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert ExportBase(base).versions() == []
    assert list(base.parent.glob(".alexnet.tmp-*")), "the killed export's folder is gone"

    first = run_main(export_model.main, *arguments)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "left by an export that did not finish" in first.stdout
    assert list(base.parent.glob(".alexnet.tmp-*")) == []
    second = run_main(export_model.main, *arguments)
    assert second.returncode == 0, second.stderr[-3000:]
    assert ExportBase(base).versions() == [1, 2]
    assert sorted(path.name for path in base.iterdir()) == ["1", "2"]

    again = run_main(export_model.main, *arguments, "--version", 2)
    assert (
        again.returncode == 2 and "already exists; versions are never overwritten" in again.stderr
    )
    assert ExportBase(base).versions() == [1, 2]


def test_a_float16_model_exports_float32_inputs_and_outputs(
    tmp_path, labels_file, image_files, runner
):
    model_file = save_model(tmp_path / "float16.keras", policy="mixed_float16")
    assert keras.models.load_model(model_file).get_layer("conv2").compute_dtype == "float16"
    result = run_main(
        export_model.main,
        "--model",
        model_file,
        "--export_base",
        tmp_path / "alexnet",
        "--labels",
        labels_file,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    export = tmp_path / "alexnet" / "1"
    signatures = tf.saved_model.load(str(export)).signatures
    pixels_signature = signatures["predict_pixels"]
    assert pixels_signature.structured_input_signature[1]["images"].dtype == tf.float32
    for name in ("probabilities", "top_k_scores"):
        assert pixels_signature.structured_outputs[name].dtype == tf.float32
        assert signatures["serving_default"].structured_outputs[name].dtype == tf.float32
    assert signatures["features"].structured_outputs["fc7"].dtype == tf.float32
    images = [image_files["photo.jpg"].read_bytes()]
    answer = run_signature(
        runner,
        export,
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)},
    )
    assert answer.ok, answer.status
    assert answer.outputs["probabilities"].dtype == np.float32
    assert abs(float(answer.outputs["probabilities"].sum()) - 1.0) < 1e-3


def test_no_function_in_the_export_needs_xla(export_dir):
    assert serving.xla_must_compile_functions(export_dir) == []


def test_export_refuses_bad_labels_and_missing_models(model_file, tmp_path, python, repo_root):
    few = tmp_path / "few.txt"
    few.write_text("a\nb\nc\n")
    result = run_main(
        export_model.main, "--model", model_file, "--export_base", tmp_path / "x", "--labels", few
    )
    assert result.returncode == 2
    assert f"3 labels in {few} but {model_file} predicts 10 classes" in result.stderr
    # The script's own process, as users run it.
    missing = run_export(
        python, repo_root, "--model", tmp_path / "nope.keras", "--export_base", tmp_path / "x"
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    for result in (result, missing):
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() or ExportBase(tmp_path / "x").versions() == []


def test_labels_default_to_the_training_runs_class_names(tmp_path, labels_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data_dir": str(labels_file.parent)}))
    assert serving.labels_for_model(run / "alexnet.keras") == LABELS
    # train.py records the class names themselves: they win, the data folder may be gone.
    (run / "run.json").write_text(
        json.dumps({"data_dir": str(labels_file.parent), "class_names": ["a", "b"]})
    )
    assert serving.labels_for_model(run / "alexnet.keras") == ["a", "b"]
    assert serving.labels_for_model(tmp_path / "elsewhere" / "alexnet.keras") is None


def test_readme_downstream_snippet_runs_verbatim_in_a_fresh_process(
    model_file, image_files, tmp_path, python, repo_root
):
    readme = (repo_root / "README.md").read_text()
    section = readme.split("### Use a trained model in your app", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "import alexnet_keras" in snippet
    workdir = tmp_path / "app"  # outside the checkout: only the installed package is there
    (workdir / "runs" / "alexnet").mkdir(parents=True)
    (workdir / "runs" / "alexnet" / "alexnet.keras").write_bytes(model_file.read_bytes())
    (workdir / "cat.jpg").write_bytes(image_files["photo.jpg"].read_bytes())
    result = subprocess.run(
        [python, "-c", snippet],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, top5 = keras_reference(model_file, [image_files["photo.jpg"].read_bytes()])
    printed = [int(value) for value in re.search(r"\[([\d\s]+)\]", result.stdout).group(1).split()]
    assert printed == top5[0].tolist()


def test_tfsmlayer_answers_from_the_export(export_dir, model_file, image_files):
    layer = keras.layers.TFSMLayer(str(export_dir), call_endpoint="serving_default")
    images = [image_files["drawing.png"].read_bytes(), image_files["photo.jpg"].read_bytes()]
    outputs = layer(tf.constant(images))
    _, top5 = keras_reference(model_file, images)
    assert outputs["top_k_classes"].numpy().tolist() == top5.tolist()


# === The Classify API: tf.Examples in, (label, score) pairs out ===


def record_examples(synthetic_records, count):
    """The first `count` Examples of the records' validation split, as the converter wrote
    them (every feature of a record, not only the image)."""
    paths = sorted(tf.io.gfile.glob(DataDir(synthetic_records).shard_pattern("validation")))
    dataset = tf.data.TFRecordDataset(paths).take(count)
    return [tf.train.Example.FromString(record) for record in dataset.as_numpy_iterator()]


def classification_request(examples, signature="classify"):
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "alexnet"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.extend(examples)
    return request


def test_classify_answers_our_records_like_serving_default(export_dir, synthetic_records, runner):
    examples = record_examples(synthetic_records, 4)
    images = [example.features.feature[Feature.ENCODED].bytes_list.value[0] for example in examples]
    classify_answer, default = run_signatures(
        runner,
        export_dir,
        [
            classify_inputs(classification_request(examples)),
            ("serving_default", {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)}),
        ],
    )
    classified = classification(classify_answer)
    # TF Serving's Classify API refuses any signature of another method.
    assert classified.method_name == "tensorflow/serving/classify"
    assert classified.ok, classified.status
    assert default.ok, default.status
    assert len(classified.results) == len(examples)
    for classes, labels, scores in zip(
        classified.results, default.outputs["top_k_labels"], default.outputs["top_k_scores"]
    ):
        assert [label for label, _ in classes] == [label.decode() for label in labels]
        np.testing.assert_allclose([score for _, score in classes], scores, rtol=1e-6)
        assert len(classes) == 5


def test_classify_refuses_bad_examples_with_invalid_argument(export_dir, synthetic_records, runner):
    (good,) = record_examples(synthetic_records, 1)
    without_the_image_key, not_an_image = tf.train.Example(), tf.train.Example()
    without_the_image_key.CopyFrom(good)
    del without_the_image_key.features.feature[Feature.ENCODED]
    not_an_image.CopyFrom(good)
    not_an_image.features.feature[Feature.ENCODED].bytes_list.value[0] = b"GIF? no"
    cases = {
        f"Feature: {Feature.ENCODED} (data type: string) is required": without_the_image_key,
        "not a JPEG, PNG, GIF, BMP or WebP image": not_an_image,
    }
    # Each bad Example beside a good one: one bad Example fails its whole request.
    answers = run_signatures(
        runner,
        export_dir,
        [classify_inputs(classification_request([good, bad])) for bad in cases.values()],
    )
    for message, answer in zip(cases, answers):
        classified = classification(answer)
        assert classified.status.startswith("INVALID_ARGUMENT: "), classified.status
        assert message in classified.status
        assert classified.results == []


# === The REST client, against a stand-in server that answers through the C++ loader ===


class _StandInServer(http.server.BaseHTTPRequestHandler):
    runner = export_dir = None

    def do_POST(self):
        if self.path not in ("/v1/models/alexnet:predict", "/v1/models/alexnet:classify"):
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith(":classify"):
            request = rest_classify_request(body, "alexnet")
            answer = classify_request(self.runner, self.export_dir, request)
            response = rest_classify_response(answer.results) if answer.ok else None
        else:
            signature, inputs = rest_body_to_tensors(body, {"image_bytes": tf.string})
            answer = run_signature(self.runner, self.export_dir, signature, inputs)
            response = rest_response(answer.outputs) if answer.ok else None
        if not answer.ok:
            return self._reply(400, {"error": answer.status.split(": ", 1)[1]})
        self._reply(200, response)

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in_server(export_dir, runner):
    handler = type("Handler", (_StandInServer,), {"runner": runner, "export_dir": export_dir})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def load_client(repo_root):
    spec = importlib.util.spec_from_file_location("client", repo_root / "export" / "client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


def test_client_prints_top5_labels_from_the_server(
    stand_in_server, image_files, model_file, python, repo_root, tmp_path
):
    paths = [image_files["photo.jpg"], image_files["drawing.png"]]
    result = subprocess.run(
        [
            python,
            "export/client.py",
            "--server",
            stand_in_server,
            "--model",
            "alexnet",
            *map(str, paths),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, top5 = keras_reference(model_file, [path.read_bytes() for path in paths])
    blocks = result.stdout.split(f"{paths[1]}:")
    for block, classes in zip(blocks, top5):
        printed = re.findall(r"^\s+[\d.]+%\s+(.+)$", block, re.M)
        assert printed == [LABELS[index] for index in classes]
    # The client's body is the body of docs/serving.md.
    client = load_client(repo_root)
    assert (
        client.request_body([paths[0]])["instances"]
        == readme_rest_body(repo_root, paths[0])["instances"]
    )


def test_client_prints_fc7_from_the_features_signature(
    stand_in_server, image_files, model_file, python, repo_root
):
    paths = [image_files["photo.jpg"], image_files["drawing.png"]]
    result = subprocess.run(
        [
            python,
            "export/client.py",
            "--server",
            stand_in_server,
            "--signature",
            "features",
            *map(str, paths),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = [path.read_bytes() for path in paths]
    _, top5 = keras_reference(model_file, images)
    expected = fc7_reference(model_file, images)
    blocks = result.stdout.split(f"{paths[1]}:")
    assert len(blocks) == 2
    for block, classes, fc7 in zip(blocks, top5, expected):
        printed = re.findall(r"^\s+[\d.]+%\s+(.+)$", block, re.M)
        assert printed == [LABELS[index] for index in classes]
        count, values = re.search(r"^  fc7 \((\d+) values\): (.*)$", block, re.M).groups()
        assert int(count) == len(fc7)
        np.testing.assert_allclose(
            [float(value) for value in values.split()],
            fc7,
            rtol=1e-5,
            atol=1e-5 * np.abs(fc7).max(),
        )
    # The client's body is docs/serving.md's body for the features signature.
    client = load_client(repo_root)
    assert client.request_body([paths[0]], "features") == readme_rest_body(
        repo_root, paths[0], signature="features"
    )


def test_client_classify_prints_the_top5_through_the_classify_api(
    stand_in_server, image_files, model_file, python, repo_root
):
    paths = [image_files["photo.jpg"], image_files["drawing.png"]]
    result = subprocess.run(
        [python, "export/client.py", "--server", stand_in_server, "--classify", *map(str, paths)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities, top5 = keras_reference(model_file, [path.read_bytes() for path in paths])
    blocks = result.stdout.split(f"{paths[1]}:")
    assert len(blocks) == 2
    for block, classes, row in zip(blocks, top5, probabilities):
        printed = re.findall(r"^\s+([\d.]+)%\s+(.+)$", block, re.M)
        assert [label for _, label in printed] == [LABELS[index] for index in classes]
        np.testing.assert_allclose(
            [float(score) / 100 for score, _ in printed], row[classes], atol=1e-4
        )
    # The client's body is docs/serving.md's Classify body.
    client = load_client(repo_root)
    assert client.classify_body([paths[0]]) == readme_rest_body(
        repo_root, paths[0], signature="classify"
    )


def test_client_names_the_problem_when_the_server_refuses_or_is_away(
    stand_in_server, tmp_path, python, repo_root
):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"plain text")
    refused = subprocess.run(
        [python, "export/client.py", "--server", stand_in_server, str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 1
    assert "answered HTTP 400" in refused.stderr and "not a JPEG, PNG" in refused.stderr
    unknown = subprocess.run(
        [python, "export/client.py", "--server", stand_in_server, "--model", "resnet", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode == 1 and "HTTP 404: Servable not found" in unknown.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    away = subprocess.run(
        [python, "export/client.py", "--server", f"http://127.0.0.1:{closed_port}", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert away.returncode == 1 and "cannot reach TensorFlow Serving" in away.stderr
    for result in (refused, unknown, away):
        assert "Traceback" not in result.stderr


# === The files around the server ===


def test_serving_configuration_files_agree_with_the_export(repo_root):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (repo_root / "export" / "models.config").read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    (model,) = config.model_config_list.config
    assert model.name == "alexnet" and model.base_path == "/models/alexnet"

    batching = (repo_root / "export" / "batching_parameters.txt").read_text()
    values = dict(re.findall(r"^(\w+) \{ value: (\d+) \}", batching, re.M))
    assert int(values["max_batch_size"]) == max(serving.WARMUP_BATCH_SIZES)

    compose = (repo_root / "export" / "docker-compose.yml").read_text()
    pinned = re.search(
        r"^tensorflow==(\S+)$", (repo_root / "requirements.txt").read_text(), re.M
    ).group(1)
    assert f"image: tensorflow/serving:{pinned}\n" in compose
    assert pinned == tf.__version__
    for needed in (
        "- ../exports:/models:ro",
        "--model_config_file=/config/models.config",
        "--batching_parameters_file=/config/batching_parameters.txt",
        '"8500:8500"',
        '"8501:8501"',
        "--enable_batching=true",
    ):
        assert needed in compose, needed


def test_readme_grpc_snippet_gets_an_answer(
    export_dir, model_file, image_files, runner, tmp_path, python, repo_root
):
    """docs/serving.md's gRPC snippets (Predict, then Classify), run in one process against a
    stand-in PredictionService that answers through the C++ loader (only the port differs from
    the snippets)."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        classification_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class StandIn(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
            answer = run_signature(
                runner, export_dir, request.model_spec.signature_name, dict(request.inputs)
            )
            if not answer.ok:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, answer.status)
            response = predict_pb2.PredictResponse()
            for name, value in answer.outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        def Classify(self, request, context):  # noqa: N802 (gRPC's naming)
            classification = classify_request(runner, export_dir, request)
            if not classification.ok:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, classification.status)
            response = classification_pb2.ClassificationResponse()
            for classes in classification.results:
                answered = response.result.classifications.add()
                for label, score in classes:
                    answered.classes.add(label=label, score=score)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(StandIn(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        readme = (repo_root / "docs" / "serving.md").read_text()
        snippets = re.findall(r"```python\n(import grpc.*?)```", readme, re.S)
        assert len(snippets) == 2 and "stub.Classify(" in snippets[1]
        snippet = "\n".join(snippets)
        (tmp_path / "cat.jpg").write_bytes(image_files["photo.jpg"].read_bytes())
        result = subprocess.run(
            [python, "-c", snippet.replace("localhost:8500", f"127.0.0.1:{port}")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop(grace=None)
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities, top5 = keras_reference(model_file, [image_files["photo.jpg"].read_bytes()])
    predicted, classified = result.stdout.rsplit("]\n", 1)  # Predict's arrays, then Classify's
    for index in top5[0]:
        assert repr(LABELS[index].encode()) in predicted
    printed = [line.rsplit(" ", 1) for line in classified.splitlines()]
    assert [label for label, _ in printed] == [LABELS[index] for index in top5[0]]
    np.testing.assert_allclose(
        [float(score) for _, score in printed], probabilities[0][top5[0]], atol=1e-5
    )
