"""TensorFlow Serving's side of the serving tests, without a TF Serving binary.

- `build_runner` compiles `serving_runner.cc` against the `tensorflow` wheel's headers and
  `libtensorflow_cc.so.2`: it loads an export with `tensorflow::LoadSavedModel` and the tag
  "serve", as the server does, and runs signatures in a process of its own: one request a
  process with `run_signature` (so each request's peak memory can be read), several in one
  process, the export loaded once, with `run_signatures`.
- `rest_body_to_tensors` turns a REST predict body into input tensors by TF Serving's rules
  (tensorflow_serving/util/json_tensor.cc): `{"b64": ...}` objects are bytes, `instances`
  rows are stacked along the batch, `inputs` is columnar.
- `rest_response` builds the JSON the server answers, for the stand-in REST server that the
  client is tested against.
- `classify_request` answers a `ClassificationRequest` as TF Serving's Classify API does
  (tensorflow_serving/servables/tensorflow/classifier.cc): only from a signature whose
  method_name is `tensorflow/serving/classify`, with the request's Examples serialized into
  its `inputs` and its `classes` and `scores` read back as (label, score) pairs;
  `rest_classify_request` and `rest_classify_response` are the REST `:classify` body and
  answer by json_tensor.cc's rules.
"""

import base64
import dataclasses
import os
import pathlib
import re
import subprocess
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

SOURCE = pathlib.Path(__file__).with_name("serving_runner.cc")
RUNNER = "serving_runner"  # the executable's name in build_runner's folder
# TF Serving's process runs TensorFlow's default CPU allocator: not the commands' choice,
# which the test processes make too (alexnet_keras_base.quiet.import_tensorflow_quietly).
SERVING_ENVIRONMENT = {
    name: value for name, value in os.environ.items() if name != "TF_CPU_ALLOCATOR_USE_BFC"
}


def build_runner(output_dir):
    """Compiles the stand-in loader; returns the executable's path."""
    library_dir = pathlib.Path(tf.sysconfig.get_lib())
    executable = pathlib.Path(output_dir) / RUNNER
    command = [
        "g++",
        "-O1",
        "-w",
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE),
        "-o",
        str(executable),
        f"-L{library_dir}",
        "-Wl,--no-as-needed",
        "-l:libtensorflow_cc.so.2",
        "-l:libtensorflow_framework.so.2",
        f"-Wl,-rpath,{library_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RuntimeError(f"building the serving runner failed:\n{result.stderr[-5000:]}")
    return executable


@dataclasses.dataclass
class Answer:
    status: str  # "OK" or "<CODE>: <message>"
    outputs: dict  # output name -> numpy array
    peak_rss_bytes: int
    exit_code: int
    method_name: str = None  # the signature's, as the loader read it (None: not found)

    @property
    def ok(self):
        return self.status == "OK"

    @property
    def code(self):
        return "OK" if self.ok else self.status.split(":", 1)[0]


def run_signature(runner, export_dir, signature, inputs, timeout=300):
    """Runs `signature` of the export in a new loader process. `inputs` maps input names to
    TensorProtos or values that `tf.make_tensor_proto` takes."""
    (answer,) = run_signatures(runner, export_dir, [(signature, inputs)], timeout)
    return answer


def run_signatures(runner, export_dir, requests, timeout=300):
    """Runs each (signature, inputs) of `requests`, in order, in one new loader process that
    loads the export once; their Answers, which share the process's peak memory."""
    with tempfile.TemporaryDirectory(prefix="serving-request-") as folder:
        folder = pathlib.Path(folder)
        arguments, output_dirs = [], []
        for index, (signature, inputs) in enumerate(requests):
            output_dirs.append(folder / f"outputs-{index}")
            output_dirs[-1].mkdir()
            arguments += ["--"] * bool(index) + [signature, str(output_dirs[-1])]
            for name, value in inputs.items():
                proto = (
                    value
                    if isinstance(value, tensor_pb2.TensorProto)
                    else tf.make_tensor_proto(value)
                )
                path = folder / f"input-{index}-{name}.pb"
                path.write_bytes(proto.SerializeToString())
                arguments.append(f"{name}={path}")
        result = subprocess.run(
            [str(runner), str(export_dir), *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=SERVING_ENVIRONMENT,
        )
        text, found, peak = result.stdout.rpartition("peak_rss_kb: ")
        # One block per request; an export that did not load answers them all with one status.
        blocks = [block for block in text.split("end_of_request\n") if "status: " in block]
        if len(blocks) == 1 and "end_of_request" not in text:
            blocks *= len(requests)
        if not found or len(blocks) != len(requests):
            raise RuntimeError(
                f"the runner printed no status for each request (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
        answers = []
        for block, output_dir in zip(blocks, output_dirs):
            head, _, status = block.partition("status: ")
            method_name = re.search(r"^method_name: (.*)$", head, re.M)
            outputs = {
                path.stem: tf.make_ndarray(tensor_pb2.TensorProto.FromString(path.read_bytes()))
                for path in output_dir.glob("*.pb")
            }
            answers.append(
                Answer(
                    # The status message spans lines (TF appends the failing node).
                    status.rstrip("\n"),
                    outputs,
                    int(peak.split()[0]) * 1024,
                    result.returncode,
                    method_name and method_name.group(1),
                )
            )
        return answers


def _decode_b64(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f'an object in a tensor value must be {{"b64": ...}}, got {value}')
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _tensor(value, dtype):
    return tf.make_tensor_proto(
        np.array(value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype), dtype=dtype
    )


def rest_body_to_tensors(body, input_dtypes):
    """(signature name, {input name: TensorProto}) from a REST predict body (a dict), for a
    signature whose inputs have `input_dtypes` ({name: tf.DType})."""
    signature = body.get("signature_name", "serving_default")
    names = list(input_dtypes)
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("the body needs exactly one of 'instances' and 'inputs'")
    if "instances" in body:
        rows = body["instances"]
        columns = {name: [] for name in names}
        for row in rows:
            named = isinstance(row, dict) and set(row) != {"b64"}
            if not named and len(names) != 1:
                raise ValueError("with several inputs every instance must name them")
            for name in names:
                columns[name].append(_decode_b64(row[name] if named else row))
    else:
        inputs = body["inputs"]
        named = isinstance(inputs, dict) and set(inputs) != {"b64"}
        columns = {name: _decode_b64(inputs[name] if named else inputs) for name in names}
    return signature, {name: _tensor(columns[name], input_dtypes[name]) for name in names}


def _json_value(array):
    if array.dtype == object:  # strings: TF Serving answers UTF-8 text
        return np.vectorize(bytes.decode, otypes=[object])(array).tolist()
    return array.tolist()


def rest_response(outputs):
    """The row-format answer: {"predictions": [{output: value, ...} per instance]}."""
    batch = len(next(iter(outputs.values())))
    return {
        "predictions": [
            {name: _json_value(value[index]) for name, value in outputs.items()}
            for index in range(batch)
        ]
    }


# === The Classify API ===


@dataclasses.dataclass
class Classification:
    status: str  # as Answer's
    results: list  # per example, [(label, score), ...] best first
    method_name: str

    @property
    def ok(self):
        return self.status == "OK"


def _serialized_examples(request):
    """The request's Examples as TF Serving feeds them: serialized, the context (if any)
    merged under each example's own features."""
    which = request.input.WhichOneof("kind")
    if which == "example_list_with_context":
        listed = request.input.example_list_with_context
        examples = []
        for example in listed.examples:
            merged = type(example)()
            merged.CopyFrom(listed.context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        examples = list(request.input.example_list.examples) if which else []
    return [example.SerializeToString() for example in examples]


def classify_inputs(request):
    """(signature, inputs) that TF Serving's Classify runs for a `ClassificationRequest`."""
    signature = request.model_spec.signature_name or "serving_default"
    examples = _serialized_examples(request)
    return signature, {
        tf.saved_model.CLASSIFY_INPUTS: tf.make_tensor_proto(examples, dtype=tf.string)
    }


def classification(answer):
    """TF Serving's Classification from the Answer of a signature run by `classify_inputs`:
    refused unless the signature is of the Classify method, with `classes` and/or `scores`."""
    if answer.method_name is not None and answer.method_name != tf.saved_model.CLASSIFY_METHOD_NAME:
        status = (
            f"INVALID_ARGUMENT: Expected classification signature method_name to be "
            f"{tf.saved_model.CLASSIFY_METHOD_NAME}. Was: {answer.method_name}"
        )
        return Classification(status, [], answer.method_name)
    if not answer.ok:
        return Classification(answer.status, [], answer.method_name)
    classes = answer.outputs.get(tf.saved_model.CLASSIFY_OUTPUT_CLASSES)
    scores = answer.outputs.get(tf.saved_model.CLASSIFY_OUTPUT_SCORES)
    names = {tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES}
    if set(answer.outputs) - names or (classes is None and scores is None):
        raise AssertionError(f"not a classification signature: outputs {sorted(answer.outputs)}")
    for tensor, dtype in ((classes, object), (scores, np.float32)):
        if tensor is not None and (tensor.ndim != 2 or tensor.dtype != dtype):
            raise AssertionError(f"expected a [batch, classes] {dtype} tensor, got {tensor}")
    shape = (classes if classes is not None else scores).shape
    results = [
        [
            (
                None if classes is None else classes[row, column].decode(),
                None if scores is None else float(scores[row, column]),
            )
            for column in range(shape[1])
        ]
        for row in range(shape[0])
    ]
    return Classification("OK", results, answer.method_name)


def classify_request(runner, export_dir, request, timeout=300):
    """TF Serving's Classify on a `ClassificationRequest`, through the C++ loader."""
    if not _serialized_examples(request):
        return Classification("INVALID_ARGUMENT: Input is empty.", [], None)
    signature, inputs = classify_inputs(request)
    return classification(run_signature(runner, export_dir, signature, inputs, timeout))


def _feature(name, values):
    """A JSON feature value (one value or a list) -> tf.train.Feature, by json_tensor.cc's
    rules: {"b64": ...} and strings are bytes, integers int64, decimals float."""
    values = values if isinstance(values, list) else [values]
    kinds = set()
    feature = tf.train.Feature()
    for value in values:
        if isinstance(value, dict):
            if set(value) != {"b64"}:
                raise ValueError(f"Feature: {name} has element with unexpected JSON type: object")
            kinds.add("bytes")
            feature.bytes_list.value.append(base64.b64decode(value["b64"]))
        elif isinstance(value, str):
            kinds.add("bytes")
            feature.bytes_list.value.append(value.encode())
        elif isinstance(value, (bool, int)):
            kinds.add("int64")
            feature.int64_list.value.append(int(value))
        elif isinstance(value, float):
            kinds.add("float")
            feature.float_list.value.append(value)
        else:
            raise ValueError(f"Feature: {name} has element with unexpected JSON type")
    if len(kinds) > 1:
        raise ValueError(f"Unexpected element type in feature: {name}")
    return feature


def _example(features):
    if not isinstance(features, dict):
        raise ValueError("Example must be JSON object")
    return tf.train.Example(
        features=tf.train.Features(
            feature={name: _feature(name, value) for name, value in features.items()}
        )
    )


def rest_classify_request(body, model_name):
    """A `ClassificationRequest` from a REST `:classify` body (a dict)."""
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = body.get("signature_name", "")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ValueError("When method is classify, key 'examples' is expected and was not found")
    if "context" in body:
        listed = request.input.example_list_with_context
        listed.context.CopyFrom(_example(body["context"]))
    else:
        listed = request.input.example_list
    listed.examples.extend(_example(features) for features in examples)
    return request


def rest_classify_response(results):
    """The REST `:classify` answer: {"results": [[[label, score], ...] per example]}."""
    return {"results": [[[label, score] for label, score in classes] for classes in results]}
