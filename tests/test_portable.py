"""export_model.py --output: the LiteRT and ONNX files, run by their own runtimes (the LiteRT
interpreter of ai-edge-litert, ONNX Runtime) against the Keras model on the demo's validation
images, and at full width on an imported bvlc_alexnet; their operators, LRN constants, class
names, quantization; the refusals, which write nothing."""

import signal
import time

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from alexnet_keras import (
    caffe_weights,
    input_pipeline,
    litert,
    onnx_format,
    portable_contract,
)
from alexnet_keras_base.layout import VALIDATION, DataDir
from alexnet_keras_cli import export_model
from caffe_files import CAFFE_LRN, random_weights
from commands import run_main, start_script
from small_models import saved_small_alexnet, written_labels

NUM_CLASSES = 4  # as the synthetic_records fixture
LABELS = ["circle", "crème brûlée", "star", "ring"]
TOLERANCE = portable_contract.FLOAT_TOLERANCE  # absolute, on probabilities
# The paper's LRN (the tiny model's) as ONNX states it: alpha multiplied by the window.
PAPER_LRN_ONNX = {"size": 5, "alpha": 5e-4, "beta": 0.75, "bias": 2.0}
BUILT_IN_NETWORK_OPERATORS = {
    "LOCAL_RESPONSE_NORMALIZATION",
    "SPLIT",
    "CONV_2D",
    "CONCATENATION",
    "MAX_POOL_2D",
    "FULLY_CONNECTED",
    "SOFTMAX",
}


# === Fixtures ===


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return saved_small_alexnet(tmp_path_factory.mktemp("model") / "alexnet.keras", NUM_CLASSES, 11)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    return written_labels(tmp_path_factory.mktemp("labels") / "labels.txt", LABELS)


@pytest.fixture(scope="module")
def validation_images(synthetic_records):
    """The demo records' validation split, preprocessed as for evaluation."""
    dataset = input_pipeline.make_eval_dataset(
        DataDir(synthetic_records).shard_pattern(VALIDATION), 64
    )
    return np.concatenate([images.numpy() for images, _ in dataset])


@pytest.fixture(scope="module")
def keras_probabilities(model_file, validation_images):
    model = keras.models.load_model(model_file)
    return tf.nn.softmax(model(validation_images, training=False)).numpy()


@pytest.fixture(scope="module")
def files(model_file, labels_file, synthetic_records, tmp_path_factory):
    """{kind: path}: each file written once by the command."""
    folder = tmp_path_factory.mktemp("portable")
    options = {
        "float.tflite": [],
        "weights.tflite": ["--quantize", "weights"],
        "int8.tflite": ["--quantize", "int8", "--calibration_data", synthetic_records],
        "float.onnx": [],
    }
    paths = {}
    for name, extra in options.items():
        paths[name] = folder / name
        result = run_main(
            export_model.main,
            *("--model", model_file, "--labels", labels_file, "--output", paths[name], *extra),
        )
        assert result.returncode == 0, result.stderr
        assert f"to {paths[name]}: " in result.stdout
    assert sorted(path.name for path in folder.iterdir()) == sorted(options)
    return paths


def litert_answer(path, images):
    """The file run as an app runs it: the interpreter, the input resized to the batch."""
    interpreter = Interpreter(model_path=str(path))
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    assert "images" in input_detail["name"] and input_detail["dtype"] == np.float32
    assert list(input_detail["shape_signature"]) == [-1, 227, 227, 3]
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(output_detail["index"])


def onnx_answer(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()] == [
        ("images", "tensor(float)", [227, 227, 3])
    ]
    (probabilities,) = session.run(["probabilities"], {"images": images})
    return probabilities


def operators(path):
    """The operators of a .tflite file by name, as in the documentation's snippet."""
    return litert.operator_names(path.read_bytes())


def assert_built_in_only(names):
    assert not [name for name in names if "CUSTOM" in name or "FLEX" in name.upper()], names
    assert not {"VAR_HANDLE", "READ_VARIABLE", "CALL_ONCE"} & names, names
    assert BUILT_IN_NETWORK_OPERATORS <= names, BUILT_IN_NETWORK_OPERATORS - names


def top1_agreement(first, second):
    return float(np.mean(first.argmax(axis=1) == second.argmax(axis=1)))


# === LiteRT ===


def test_the_litert_file_answers_the_keras_probabilities(
    files, validation_images, keras_probabilities
):
    assert len(validation_images) == 24
    answer = litert_answer(files["float.tflite"], validation_images)
    assert answer.shape == (24, NUM_CLASSES)
    assert np.abs(answer - keras_probabilities).max() <= TOLERANCE


def test_the_litert_file_holds_built_in_operators_only_and_the_weights(files, model_file):
    assert_built_in_only(operators(files["float.tflite"]))
    model = keras.models.load_model(model_file)
    weights_bytes = 4 * model.count_params()
    assert files["float.tflite"].stat().st_size >= weights_bytes


def test_the_operator_check_sees_a_flex_operator(tmp_path):
    """The check above, on a graph that needs TensorFlow's Erf: with SELECT_TF_OPS the
    converter writes it as a Flex operator, which the check refuses."""

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    def needs_tensorflow(x):
        return tf.math.erf(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [needs_tensorflow.get_concrete_function()]
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    names = litert.operator_names(converter.convert())
    assert names == {"CUSTOM:FlexErf"}
    with pytest.raises(AssertionError, match="FlexErf"):
        assert_built_in_only(names)


def test_the_class_names_travel_in_both_files(files):
    # As docs/serving.md reads them, without the project's code.
    model = schema.Model.GetRootAs(files["float.tflite"].read_bytes())
    metadata = {
        model.Metadata(i).Name().decode(): model.Metadata(i) for i in range(model.MetadataLength())
    }
    data = model.Buffers(metadata["labels"].Buffer()).DataAsNumpy()
    assert data.tobytes().decode().splitlines() == LABELS
    for name in ("weights.tflite", "int8.tflite"):
        assert litert.read_labels(files[name].read_bytes()) == LABELS
    session = onnxruntime.InferenceSession(str(files["float.onnx"]))
    assert session.get_modelmeta().custom_metadata_map["labels"].splitlines() == LABELS


def test_weights_quantization_shrinks_the_file_and_keeps_the_top_1(
    files, validation_images, keras_probabilities
):
    assert files["weights.tflite"].stat().st_size <= 0.3 * files["float.tflite"].stat().st_size
    assert_built_in_only(operators(files["weights.tflite"]))
    answer = litert_answer(files["weights.tflite"], validation_images)
    assert top1_agreement(answer, keras_probabilities) >= 0.99


def test_int8_keeps_the_lrn_in_float_and_the_rest_in_int8(
    files, validation_images, keras_probabilities
):
    names = operators(files["int8.tflite"])
    assert_built_in_only(names)
    assert {"QUANTIZE", "DEQUANTIZE"} <= names
    interpreter = Interpreter(model_path=str(files["int8.tflite"]))
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    input_types = {}
    for op in interpreter._get_ops_details():
        input_types.setdefault(op["op_name"], set()).update(
            tensors[index]["dtype"] for index in op["inputs"] if index >= 0
        )
    assert input_types["LOCAL_RESPONSE_NORMALIZATION"] == {np.float32}
    assert np.int8 in input_types["CONV_2D"] and np.float32 not in input_types["CONV_2D"]
    answer = litert_answer(files["int8.tflite"], validation_images)
    assert answer.dtype == np.float32
    # The demo's trained model kept 290 of 300 (bench/format_speed.py, docs/performance.md).
    assert top1_agreement(answer, keras_probabilities) >= 0.9


# === ONNX ===


def test_the_onnx_file_answers_the_keras_probabilities(
    files, validation_images, keras_probabilities
):
    answer = onnx_answer(files["float.onnx"], validation_images)
    assert np.abs(answer - keras_probabilities).max() <= TOLERANCE


def test_the_onnx_lrn_nodes_carry_the_window_factor(files):
    model = onnx.load(files["float.onnx"])
    onnx.checker.check_model(model)
    nodes = [node for node in model.graph.node if node.op_type == "LRN"]
    assert len(nodes) == 2
    for node in nodes:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes.keys() == PAPER_LRN_ONNX.keys()
        for key, value in PAPER_LRN_ONNX.items():
            assert attributes[key] == pytest.approx(value, rel=1e-6), (key, attributes)
    operators = {node.op_type for node in model.graph.node}
    assert {"Split", "Conv", "Concat", "Gemm", "Softmax"} <= operators


# === Full width: the imported bvlc_alexnet ===


@pytest.mark.slow
def test_a_full_width_bvlc_alexnet_converts_to_both_with_caffes_numbers(
    validation_images, tmp_path
):
    images = validation_images[:4]
    model = caffe_weights.build_imported_model(random_weights(seed=1))
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    labels = portable_contract.labels_text([f"class {index}" for index in range(1000)])
    # The converters themselves, without write_portable's own check (the tests above hold
    # it): at this size each run of a runtime costs seconds.
    converted = {
        "alexnet.tflite": (litert.convert(model, labels)[0], litert_answer),
        "alexnet.onnx": (onnx_format.convert(model, labels)[0], onnx_answer),
    }
    for name, (content, answer) in converted.items():
        (tmp_path / name).write_bytes(content)
        actual = answer(tmp_path / name, images)
        assert np.abs(actual - expected).max() <= TOLERANCE, name
        assert (np.argsort(actual)[:, -5:] == np.argsort(expected)[:, -5:]).all(), name
    assert_built_in_only(operators(tmp_path / "alexnet.tflite"))
    onnx_model = onnx.load(tmp_path / "alexnet.onnx", load_external_data=False)
    for node in (node for node in onnx_model.graph.node if node.op_type == "LRN"):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["size"] == CAFFE_LRN["local_size"]
        # Caffe's alpha as Caffe writes it: both divide it by the window.
        assert attributes["alpha"] == pytest.approx(CAFFE_LRN["alpha"], rel=1e-6)
        assert attributes["beta"] == pytest.approx(CAFFE_LRN["beta"])
        assert attributes["bias"] == pytest.approx(CAFFE_LRN["k"])


# === Refusals: exit 2, one error line, nothing written ===


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--output", "{out}/alexnet.pb"], "unknown extension '.pb'"),
        (["--output", "{out}/alexnet.onnx", "--quantize", "weights"], "--quantize is for LiteRT"),
        (["--output", "{out}/alexnet.tflite", "--quantize", "float16"], "--quantize float16"),
        (["--output", "{out}/alexnet.tflite", "--quantize", "int8"], "needs --calibration_data"),
        (
            [
                "--output",
                "{out}/alexnet.tflite",
                "--quantize",
                "int8",
                "--calibration_data",
                "{out}/none",
            ],
            "is not a folder",
        ),
        (
            [
                "--output",
                "{out}/alexnet.tflite",
                "--quantize",
                "int8",
                "--calibration_data",
                "{out}",
            ],
            "holds no TFRecord shards",
        ),
        (["--output", "{out}/alexnet.tflite", "--calibration_data", "{out}"], "only read by"),
        (["--export_base", "{out}/alexnet", "--quantize", "weights"], "are for --output"),
        (["--output", "{out}/alexnet.onnx", "--version", "3"], "are for --export_base"),
    ],
)
def test_a_bad_option_is_refused_and_nothing_is_written(model_file, tmp_path, arguments, message):
    out = tmp_path / "out"
    out.mkdir()
    arguments = [argument.format(out=out) for argument in arguments]
    result = run_main(export_model.main, "--model", model_file, *arguments)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_bad_model_is_refused_and_nothing_is_written(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_text("not a zip archive")
    for model, message in (
        (bad, "is not a .keras model file"),
        (tmp_path / "no.keras", "does not exist"),
    ):
        result = run_main(export_model.main, "--model", model, "--output", tmp_path / "a.onnx")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("error:") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.keras"]


def test_a_file_that_cannot_be_renamed_into_place_leaves_nothing(model_file, tmp_path):
    """The file is written under a temporary name beside the output and renamed: when the
    rename fails (here a folder holds the name), the temporary file is gone too."""
    (tmp_path / "alexnet.onnx").mkdir()
    result = run_main(
        export_model.main, "--model", model_file, "--output", tmp_path / "alexnet.onnx"
    )
    assert result.returncode == 2 and result.stderr.count("error:") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["alexnet.onnx"]
    assert list((tmp_path / "alexnet.onnx").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "suffix, scratch_prefix", [(".tflite", "alexnet-litert-"), (".onnx", "alexnet-onnx-")]
)
def test_a_killed_conversion_leaves_no_file_under_its_name(
    suffix, scratch_prefix, model_file, labels_file, tmp_path, python, repo_root
):
    """kill -9 in the middle of the conversion, once its scratch folder (in TMPDIR) exists:
    nothing in the output's folder, and the same command then writes the file whole."""
    scratch, folder = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    folder.mkdir()
    output = folder / f"alexnet{suffix}"
    arguments = ["--model", model_file, "--labels", labels_file, "--output", output]
    script = "export/export_model.py"
    process = start_script(python, repo_root, script, *arguments, env={"TMPDIR": str(scratch)})
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list(scratch.glob(f"{scratch_prefix}*")):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the conversion ended before its scratch folder was seen"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(folder.iterdir()) == []

    result = run_main(export_model.main, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.name for path in folder.iterdir()] == [output.name]
