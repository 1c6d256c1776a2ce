"""TensorFlow Serving's side of the serving tests, without a TF Serving binary.

- `build_runner` compiles `serving_runner.cc` against the `tensorflow` wheel's headers and
  `libtensorflow_cc.so.2`: it loads an export with `tensorflow::LoadSavedModel` and the tag
  "serve", as the server does, and runs one signature in its own process (so each request's
  peak memory can be read).
- `rest_body_to_tensors` turns a REST predict body into input tensors by TF Serving's rules
  (tensorflow_serving/util/json_tensor.cc): `{"b64": ...}` objects are bytes, `instances`
  rows are stacked along the batch, `inputs` is columnar.
- `rest_response` builds the JSON the server answers, for the stand-in REST server that the
  client is tested against.
"""

import base64
import dataclasses
import os
import pathlib
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

    @property
    def ok(self):
        return self.status == "OK"

    @property
    def code(self):
        return "OK" if self.ok else self.status.split(":", 1)[0]


def run_signature(runner, export_dir, signature, inputs, timeout=300):
    """Runs `signature` of the export in a new loader process. `inputs` maps input names to
    TensorProtos or values that `tf.make_tensor_proto` takes."""
    with tempfile.TemporaryDirectory(prefix="serving-request-") as folder:
        folder = pathlib.Path(folder)
        arguments = []
        for name, value in inputs.items():
            proto = (
                value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
            )
            path = folder / f"input-{name}.pb"
            path.write_bytes(proto.SerializeToString())
            arguments.append(f"{name}={path}")
        output_dir = folder / "outputs"
        output_dir.mkdir()
        result = subprocess.run(
            [str(runner), str(export_dir), signature, str(output_dir), *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=SERVING_ENVIRONMENT,
        )
        status = peak = None
        for line in result.stdout.splitlines():
            if line.startswith("status: "):
                status = line[len("status: ") :]
            elif line.startswith("peak_rss_kb: "):
                peak = int(line.split()[1]) * 1024
        if status is None:
            raise RuntimeError(
                f"the runner printed no status (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
        # The status message spans lines (TF appends the failing node).
        if not status == "OK":
            status = result.stdout.split("status: ", 1)[1].rsplit("\npeak_rss_kb", 1)[0]
        outputs = {
            path.stem: tf.make_ndarray(tensor_pb2.TensorProto.FromString(path.read_bytes()))
            for path in output_dir.glob("*.pb")
        }
        return Answer(status, outputs, peak, result.returncode)


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
