"""import_weights.py: bvlc_alexnet files of our own making (tests/caffe_files.py) in both
.caffemodel encodings and as caffe-tensorflow's .npy, against an independent NumPy forward
pass with Caffe's semantics; the refusals; and the imported model through evaluation, export
and TF Serving's loader.

The numerical tests run at width 0.125 with 4 classes (the library's width parameter; the
command always checks against the full bvlc_alexnet), the command once at full size."""

import json
import os
import pickle
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_serving import encoded, keras_reference

import alexnet_keras
from alexnet_keras import caffe_weights, means_and_names, serving
from alexnet_keras.caffe_weights import ILSVRC_2012_BGR_MEAN
from alexnet_keras.layers import LRN_PAPER
from alexnet_keras_base.errors import UsageError
from alexnet_keras_cli import evaluate as evaluate_cli
from alexnet_keras_cli import export_model as export_cli
from alexnet_keras_cli import import_weights as import_weights_cli
from caffe_files import random_weights, train_val_layers, write_caffemodel, write_npy
from tf_serving_standin import run_signature

WIDTH = 0.125
NUM_CLASSES = 4  # as the synthetic_records fixture, for evaluate.py
CLASS_NAMES = [
    "n00000001 circle, round",
    "n00000002 square",
    "n00000003 triangle",
    "n00000004 star",
]
FORMATS = ("layer", "layers", "npy")


# === An independent forward pass with Caffe's semantics (NCHW, float64) ===


def caffe_convolution(x, weight, bias, stride, pad, group):
    """Caffe's Convolution: x (N, C, H, W), weight (out, C / group, kh, kw)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out, per_group, kernel, _ = weight.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, H', W', kh, kw)
    outputs = []
    for g in range(group):
        part = windows[:, g * per_group : (g + 1) * per_group]
        filters = weight[g * (out // group) : (g + 1) * (out // group)]
        outputs.append(np.einsum("nchwij,ocij->nohw", part, filters, optimize=True))
    return np.concatenate(outputs, axis=1) + bias[None, :, None, None]


def caffe_lrn(x, local_size, alpha, beta, k):
    """Caffe's LRN across channels: x / (k + alpha / n * sum over n channels of x^2)^beta."""
    squares = np.pad(x**2, ((0, 0), (local_size // 2,) * 2, (0, 0), (0, 0)))
    window = sum(squares[:, offset : offset + x.shape[1]] for offset in range(local_size))
    return x / (k + alpha / local_size * window) ** beta


def caffe_pooled_size(size, kernel=3, stride=2):
    """Caffe's pooling output size, rounded up (convolutions round down)."""
    pooled = int(np.ceil((size - kernel) / stride)) + 1
    return pooled - 1 if (pooled - 1) * stride >= size else pooled


def caffe_max_pool(x, kernel=3, stride=2):
    height = x.shape[2]
    pooled = caffe_pooled_size(height, kernel, stride)
    reach = (pooled - 1) * stride + kernel
    x = np.pad(
        x, ((0, 0), (0, 0), (0, reach - height), (0, reach - height)), constant_values=-np.inf
    )
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    return windows[:, :, ::stride, ::stride].max(axis=(4, 5))


def caffe_forward(weights, rgb_images, bgr_mean=ILSVRC_2012_BGR_MEAN, lrn=(5, 1e-4, 0.75, 1.0)):
    """fc8 of bvlc_alexnet as Caffe computes it, from RGB images (N, 227, 227, 3) in [0, 255]."""
    w = {
        name: (weight.astype(np.float64), bias.astype(np.float64))
        for name, (weight, bias) in weights.items()
    }
    x = rgb_images.astype(np.float64)[..., ::-1] - np.asarray(bgr_mean)  # BGR minus the mean
    x = x.transpose(0, 3, 1, 2)  # (N, 3, 227, 227)
    relu = lambda value: np.maximum(value, 0.0)  # noqa: E731
    x = relu(caffe_convolution(x, *w["conv1"], stride=4, pad=0, group=1))
    x = caffe_max_pool(caffe_lrn(x, *lrn))  # (N, 96, 27, 27)
    x = relu(caffe_convolution(x, *w["conv2"], stride=1, pad=2, group=2))
    x = caffe_max_pool(caffe_lrn(x, *lrn))  # (N, 256, 13, 13)
    x = relu(caffe_convolution(x, *w["conv3"], stride=1, pad=1, group=1))
    x = relu(caffe_convolution(x, *w["conv4"], stride=1, pad=1, group=2))
    x = relu(caffe_convolution(x, *w["conv5"], stride=1, pad=1, group=2))
    x = caffe_max_pool(x)  # (N, 256, 6, 6)
    assert x.shape[2:] == (6, 6)
    x = x.reshape(len(x), -1)  # C, H, W order, as Caffe's InnerProduct flattens
    x = relu(x @ w["fc6"][0].T + w["fc6"][1])
    x = relu(x @ w["fc7"][0].T + w["fc7"][1])
    return x @ w["fc8"][0].T + w["fc8"][1]


def relative_difference(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# === Fixtures ===


@pytest.fixture(scope="module")
def weights():
    return random_weights(WIDTH, NUM_CLASSES, seed=3)


@pytest.fixture(scope="module")
def weight_files(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return {
        "layer": write_caffemodel(folder / "current.caffemodel", weights, "layer"),
        "layers": write_caffemodel(folder / "legacy.caffemodel", weights, "layers"),
        "npy": write_npy(folder / "bvlc_alexnet.npy", weights),
    }


@pytest.fixture(scope="module")
def images():
    """Two pictures with structure (not noise), RGB float in [0, 255]."""
    rng = np.random.default_rng(5)
    coarse = rng.uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (227, 227), method="bicubic").numpy()
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def imported(weight_files, tmp_path_factory):
    """{format: path of the imported .keras file}."""
    folder = tmp_path_factory.mktemp("imported")
    paths = {}
    for kind, path in weight_files.items():
        paths[kind] = folder / f"{kind}.keras"
        caffe_weights.import_weights(
            path,
            paths[kind],
            class_names=CLASS_NAMES,
            width_multiplier=WIDTH,
            num_classes=NUM_CLASSES,
        )
    return paths


def load(path):
    return keras.models.load_model(path, safe_mode=True)


# === The numbers: equal to Caffe's forward pass ===


def test_caffes_pooling_rounding_equals_ours_at_alexnets_sizes():
    # Caffe rounds pooled sizes up, Keras' VALID pooling down: equal on 55, 27 and 13.
    for size, pooled in ((55, 27), (27, 13), (13, 6)):
        assert caffe_pooled_size(size) == (size - 3) // 2 + 1 == pooled
    assert caffe_pooled_size(56) == 28 != (56 - 3) // 2 + 1  # where they would differ


def test_the_npy_is_the_pickle_numpy_reads_as_python_2s(weight_files, weights):
    # numpy itself, on our own file (never on a stranger's): the layouts caffe-tensorflow wrote.
    loaded = np.load(weight_files["npy"], allow_pickle=True, encoding="latin1").item()
    assert sorted(loaded) == sorted(weights)
    np.testing.assert_array_equal(loaded["conv2"][0], weights["conv2"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["fc8"][0], weights["fc8"][0].T)
    assert weight_files["npy"].read_bytes().count(b"numpy.core.multiarray\n_reconstruct") > 10


@pytest.mark.parametrize("kind", FORMATS)
def test_imported_logits_equal_caffes_forward_pass(kind, imported, weights, images):
    model = load(imported[kind])
    logits = model(images, training=False).numpy()
    expected = caffe_forward(weights, images)
    assert relative_difference(logits, expected) < 1e-5
    assert np.ptp(expected) > 1.0  # logits that differ between classes: a real comparison
    assert model.get_layer("fc8").class_names == CLASS_NAMES
    np.testing.assert_allclose(
        alexnet_keras.mean_layer(model).mean.numpy(), ILSVRC_2012_BGR_MEAN[::-1], rtol=1e-6
    )


def test_the_comparison_fails_on_each_conversion_mistake(imported, weights, images):
    """Negative controls: each known way to get the conversion wrong moves the logits far
    beyond the tolerance."""
    model = load(imported["layer"])
    expected = caffe_forward(weights, images)
    assert relative_difference(model(images).numpy(), expected) < 1e-5

    # The paper's LRN (k 2, alpha 1e-4 not divided by the window) in place of Caffe's.
    paper = alexnet_keras.build_alexnet(
        num_classes=NUM_CLASSES,
        width_multiplier=WIDTH,
        lrn=LRN_PAPER,
        rgb_mean=ILSVRC_2012_BGR_MEAN[::-1],
    )
    paper.set_weights(model.get_weights())
    mistakes = {"paper's LRN": paper(images).numpy()}

    conv1 = model.get_layer("conv1")
    kernel, bias = conv1.get_weights()
    conv1.set_weights([kernel[:, :, ::-1, :], bias])  # BGR weights fed RGB pixels
    mistakes["no channel reversal"] = model(images).numpy()
    conv1.set_weights([kernel, bias])

    fc6 = model.get_layer("fc6")
    kernel, bias = fc6.get_weights()
    fc6.set_weights([np.ascontiguousarray(weights["fc6"][0].T), bias])  # C,H,W rows
    mistakes["fc6 in C,H,W order"] = model(images).numpy()
    fc6.set_weights([kernel, bias])
    assert relative_difference(model(images).numpy(), expected) < 1e-5

    for mistake, logits in mistakes.items():
        assert relative_difference(logits, expected) > 1e-2, mistake


def test_mean_flags_and_files(weights, weight_files, images, tmp_path):
    per_pixel = np.random.default_rng(1).uniform(90, 130, (3, 16, 16)).astype(np.float32)
    expected = tuple(per_pixel.astype(np.float64).mean(axis=(1, 2)))
    np.save(tmp_path / "mean.npy", per_pixel)
    np.testing.assert_allclose(means_and_names.read_mean_file(tmp_path / "mean.npy"), expected)
    # .binaryproto: a BlobProto with num 1, channels 3, height, width (fields 1-4), data 5.
    blob = b"".join(
        bytes([number << 3]) + bytes([value])
        for number, value in ((1, 1), (2, 3), (3, 16), (4, 16))
    )
    payload = per_pixel.astype("<f4").tobytes()
    blob += bytes([5 << 3 | 2]) + bytes([len(payload) & 0x7F | 0x80, len(payload) >> 7])
    (tmp_path / "mean.binaryproto").write_bytes(blob + payload)
    np.testing.assert_allclose(
        means_and_names.read_mean_file(tmp_path / "mean.binaryproto"), expected, rtol=1e-6
    )
    # The mean goes into the model and changes what it computes, as in Caffe's forward pass.
    caffe_weights.import_weights(
        weight_files["layer"],
        tmp_path / "m.keras",
        bgr_mean=expected,
        width_multiplier=WIDTH,
        num_classes=NUM_CLASSES,
    )
    logits = load(tmp_path / "m.keras")(images).numpy()
    assert relative_difference(logits, caffe_forward(weights, images, bgr_mean=expected)) < 1e-5
    assert relative_difference(logits, caffe_forward(weights, images)) > 1e-3
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="not a numeric .npy"):
        means_and_names.read_mean_file(tmp_path / "pickled.npy")


# === Refusals ===


def _with(weights, name, weight=None, bias=None):
    changed = dict(weights)
    changed[name] = (
        weights[name][0] if weight is None else weight,
        weights[name][1] if bias is None else bias,
    )
    return changed


def refusal_cases(weights, folder):
    """{case: (file, words the message must hold)} for files import_weights must refuse."""
    layers = train_val_layers()
    cases = {
        "caffenet": (
            write_caffemodel(
                folder / "caffenet.caffemodel",
                weights,
                layers=train_val_layers(caffenet_order=True),
            ),
            ["norm1", "pool1", "CaffeNet"],
        ),
        "missing fc7": (
            write_caffemodel(
                folder / "missing.caffemodel",
                weights,
                "layers",
                layers=[layer for layer in layers if layer[0] != "fc7"],
            ),
            ["fc7", "missing"],
        ),
        "conv3 shape": (
            write_caffemodel(
                folder / "shape.caffemodel",
                _with(weights, "conv3", weight=weights["conv3"][0][:, :16]),
            ),
            ["conv3", "(48, 16, 3, 3)", "(48, 32, 3, 3)"],
        ),
        "paper's LRN": (
            write_caffemodel(folder / "lrn.caffemodel", weights, overrides={"norm2": {"k": 2.0}}),
            ["norm2", "k 2.0 (bvlc_alexnet: 1.0)"],
        ),
        "ungrouped conv4": (
            write_caffemodel(
                folder / "group.caffemodel", weights, overrides={"conv4": {"group": 1}}
            ),
            ["conv4", "group 1 (bvlc_alexnet: 2)"],
        ),
        "average pooling": (
            write_caffemodel(
                folder / "ave.caffemodel", weights, "layers", overrides={"pool5": {"pool": 1}}
            ),
            ["pool5", "pool AVE (bvlc_alexnet: MAX)"],
        ),
        "npy fc6 shape": (
            write_npy(folder / "shape.npy", _with(weights, "fc6", bias=weights["fc6"][1][:7])),
            ["fc6", "biases", "(7,)"],
        ),
        "npy missing conv1": (
            write_npy(
                folder / "missing.npy",
                {name: value for name, value in weights.items() if name != "conv1"},
            ),
            ["conv1", "missing"],
        ),
    }
    damaged = weights["fc7"][0].copy()
    damaged[3, 5] = np.nan
    cases["a NaN"] = (
        write_caffemodel(folder / "nan.caffemodel", _with(weights, "fc7", damaged)),
        ["fc7", "not finite"],
    )
    whole = cases["caffenet"][0].with_name("whole.caffemodel")
    write_caffemodel(whole, weights)
    data = whole.read_bytes()
    (folder / "truncated.caffemodel").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (folder / "truncated.caffemodel", ["truncated"])
    (folder / "empty.caffemodel").write_bytes(b"")
    cases["empty"] = (folder / "empty.caffemodel", ["empty"])
    (folder / "random.caffemodel").write_bytes(np.random.default_rng(0).bytes(100_000))
    cases["random bytes"] = (folder / "random.caffemodel", ["not a Caffe model"])
    (folder / "deploy.prototxt").write_text('name: "AlexNet"\nlayer {\n  name: "data"\n}\n')
    cases["a text prototxt"] = (folder / "deploy.prototxt", ["Caffe"])
    npy = write_npy(folder / "npy.npy", weights)
    (folder / "truncated.npy").write_bytes(npy.read_bytes()[:-1000])
    cases["truncated npy"] = (folder / "truncated.npy", ["truncated"])
    np.save(folder / "array.npy", np.zeros((3, 4), np.float32))
    cases["a plain array"] = (folder / "array.npy", ["float32", "not the pickled dict"])
    return cases


@pytest.fixture(scope="module")
def refusals(weights, tmp_path_factory):
    return refusal_cases(weights, tmp_path_factory.mktemp("refusals"))


@pytest.mark.parametrize(
    "case",
    [
        "caffenet",
        "missing fc7",
        "conv3 shape",
        "paper's LRN",
        "ungrouped conv4",
        "average pooling",
        "npy fc6 shape",
        "npy missing conv1",
        "truncated",
        "empty",
        "random bytes",
        "a text prototxt",
        "truncated npy",
        "a plain array",
        "a NaN",
    ],
)
def test_files_that_are_not_bvlc_alexnet_are_refused(case, refusals, tmp_path):
    path, words = refusals[case]
    output = tmp_path / "out.keras"
    with pytest.raises(UsageError) as raised:
        caffe_weights.import_weights(path, output, width_multiplier=WIDTH, num_classes=NUM_CLASSES)
    for word in words:
        assert word in str(raised.value), (case, str(raised.value))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_malicious_npy(path, marker):
    """A .npy whose pickle calls os.system to create `marker` when loaded."""
    header = np.lib.format.header_data_from_array_1_0(np.empty((), object))
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        pickle.dump(_RunsACommand(f"touch {marker}"), handle, protocol=2)
    return path


def test_a_pickle_that_runs_a_command_is_refused_and_the_command_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = write_malicious_npy(tmp_path / "bvlc_alexnet.npy", marker)
    with pytest.raises(UsageError, match=r"calls (posix|os)\.system.*refused, nothing was run"):
        caffe_weights.import_weights(path, tmp_path / "out.keras")
    assert not marker.exists() and not (tmp_path / "out.keras").exists()


def test_the_commands_refusals_exit_2_with_a_message(refusals, tmp_path, capsys):
    output = tmp_path / "out.keras"
    for case in ("caffenet", "truncated", "empty"):
        assert (
            import_weights_cli.main(["--weights", str(refusals[case][0]), "--output", str(output)])
            == 2
        )
        error = capsys.readouterr().err
        assert error.startswith(f"error: {refusals[case][0]}: ") and "Traceback" not in error
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert (
        import_weights_cli.main(
            [
                "--weights",
                str(refusals["caffenet"][0]),
                "--output",
                str(output),
                "--class_names",
                str(names),
            ]
        )
        == 2
    )
    assert "has 2 names, the model has 1000 classes" in capsys.readouterr().err
    for flags, message in (
        (["--output", "out.h5"], "must end with .keras"),
        (["--output", "o.keras", "--mean", "1,2"], "three numbers B,G,R"),
    ):
        with pytest.raises(SystemExit) as raised:
            import_weights_cli.main(["--weights", "w.caffemodel", *flags])
        assert raised.value.code == 2 and message in capsys.readouterr().err
    assert not output.exists()


def test_the_command_imports_a_full_size_file_and_refuses_a_pickle_that_runs_code(
    tmp_path, python, repo_root
):
    full = write_caffemodel(tmp_path / "bvlc_alexnet.caffemodel", random_weights(seed=1))
    names = tmp_path / "synset_words.txt"
    names.write_text("".join(f"n{index:08d} class {index}, thing\n" for index in range(1000)))
    output = tmp_path / "models" / "bvlc_alexnet.keras"
    result = subprocess.run(
        [
            python,
            "import_weights.py",
            "--weights",
            full,
            "--output",
            output,
            "--class_names",
            names,
            "--mean",
            "100,110,120",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "60,965,224 weights" in result.stdout and "current (layer)" in result.stdout
    model = load(output)
    assert sum(np.prod(weight.shape) for weight in model.trainable_weights) == 60_965_224
    assert model.get_layer("fc8").class_names[1] == "n00000001 class 1, thing"
    np.testing.assert_allclose(alexnet_keras.mean_layer(model).mean.numpy(), (120, 110, 100))
    assert sorted(path.name for path in output.parent.iterdir()) == ["bvlc_alexnet.keras"]

    marker = tmp_path / "ran"
    malicious = write_malicious_npy(tmp_path / "evil.npy", marker)
    refused = subprocess.run(
        [python, "import_weights.py", "--weights", malicious, "--output", tmp_path / "evil.keras"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "refused, nothing was run" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not marker.exists() and not (tmp_path / "evil.keras").exists()


# === Through the rest: labels, evaluation, export, serving ===


def test_labels_for_model_falls_back_to_the_models_own_class_names(imported, tmp_path):
    model = load(imported["layer"])
    assert serving.labels_for_model(imported["layer"], model=model) == CLASS_NAMES
    labels = tmp_path / "labels.txt"
    labels.write_text("w\nx\ny\nz\n")
    assert serving.labels_for_model(imported["layer"], labels, model=model) == list("wxyz")
    # A training run's own record wins (fine-tuned on other classes).
    (tmp_path / "run.json").write_text('{"class_names": ["p", "q", "r", "s"]}')
    assert serving.labels_for_model(tmp_path / "m.keras", model=model) == list("pqrs")
    # A model without names (all models before them) gives None, as before.
    plain = alexnet_keras.build_alexnet(num_classes=4, width_multiplier=WIDTH)
    assert serving.labels_for_model(tmp_path / "elsewhere" / "m.keras", model=plain) is None


def test_evaluate_works_on_an_imported_model(imported, synthetic_records, tmp_path):
    for ten_crops in (False, True):
        report = tmp_path / f"report_{ten_crops}.json"
        arguments = [
            "--model",
            str(imported["npy"]),
            "--data_dir",
            str(synthetic_records),
            "--report",
            str(report),
            "--no_progress",
        ]
        assert evaluate_cli.main(arguments + ["--ten_crops"] * ten_crops) == 0
        assert 0.0 <= json.loads(report.read_text())["top1_error"] <= 1.0


def test_the_export_answers_with_the_models_class_names_like_keras(imported, tmp_path, runner):
    base = tmp_path / "exports" / "bvlc_alexnet"
    assert export_cli.main(["--model", str(imported["layers"]), "--export_base", str(base)]) == 0
    images = [encoded("JPEG", (320, 240), seed=11, quality=90), encoded("PNG", (256, 300), seed=12)]
    answer = run_signature(
        runner,
        base / "1",
        "serving_default",
        {"image_bytes": tf.make_tensor_proto(images, dtype=tf.string)},
    )
    assert answer.ok, answer.status
    probabilities, top5 = keras_reference(imported["layers"], images)
    np.testing.assert_allclose(answer.outputs["probabilities"], probabilities, atol=1e-5)
    assert answer.outputs["top_k_classes"].tolist() == top5[:, :4].tolist()
    assert [[label.decode() for label in row] for row in answer.outputs["top_k_labels"]] == [
        [CLASS_NAMES[index] for index in row] for row in top5[:, :4]
    ]
