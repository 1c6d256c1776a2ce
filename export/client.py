"""Sends image files to a TensorFlow Serving REST endpoint and prints the top-5 classes.

    python export/client.py --server http://localhost:8501 --model alexnet cat.jpg dog.png

The images go in one request to the model's `serving_default` signature, as
{"instances": [{"b64": "<base64 of the file>"}, ...]}: the server decodes and preprocesses
them. `--signature features` asks for the `features` signature instead, which also answers
each image's fc7 activations (4096 values at the paper's width), printed on a line after its
top 5. `--classify` asks TF Serving's Classify API instead (`:classify`, the `classify`
signature), each image as a tf.Example: {"signature_name": "classify", "examples":
[{"image/encoded": {"b64": "<base64 of the file>"}}, ...]}. Only the Python standard library is
used, so this file can be copied anywhere.
"""

import argparse
import base64
import json
import pathlib
import sys
import urllib.error
import urllib.request

# The signatures that take image files; both answer the top 5, `features` also fc7.
SIGNATURES = ("serving_default", "features")
FEATURES_OUTPUT = "fc7"
CLASSIFY_SIGNATURE = "classify"
# The records' image key (alexnet_keras_base.layout.Feature.ENCODED), under which the
# classify signature reads an Example's image: written here because this file imports nothing
# of the project.
IMAGE_KEY = "image/encoded"


class ClientError(Exception):
    """The request could not be made or was refused; the message says why."""


def _base64_files(image_paths):
    encoded = []
    for path in image_paths:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ClientError(f"{path} is not a file")
        encoded.append({"b64": base64.b64encode(path.read_bytes()).decode("ascii")})
    return encoded


def request_body(image_paths, signature="serving_default"):
    """The REST predict body for `signature`: one base64 instance per image file."""
    return {"signature_name": signature, "instances": _base64_files(image_paths)}


def classify_body(image_paths):
    """The REST classify body: one tf.Example per image file, the file under IMAGE_KEY."""
    examples = [{IMAGE_KEY: image} for image in _base64_files(image_paths)]
    return {"signature_name": CLASSIFY_SIGNATURE, "examples": examples}


def predict(server, model, body, version=None, timeout=60.0):
    """POSTs `body` to `server`'s predict endpoint for `model`; returns the predictions."""
    return _post(server, model, "predict", "predictions", body, version, timeout)


def classify(server, model, body, version=None, timeout=60.0):
    """POSTs `body` to `server`'s classify endpoint for `model`; returns the results: per
    image, [label, score] pairs, best first."""
    return _post(server, model, "classify", "results", body, version, timeout)


def _post(server, model, method, answer_key, body, version, timeout):
    model_path = f"{model}/versions/{version}" if version else model
    url = f"{server.rstrip('/')}/v1/models/{model_path}:{method}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        raise ClientError(f"{url} answered HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ClientError(
            f"cannot reach TensorFlow Serving at {server} ({reason}): is the "
            f"server running (docker compose -f export/docker-compose.yml up)?"
        ) from None
    if answer_key not in answer:
        raise ClientError(f"{url} answered without {answer_key}: {str(answer)[:500]}")
    return answer[answer_key]


def format_classifications(image_paths, results):
    lines = []
    for path, classes in zip(image_paths, results):
        lines.append(f"{path}:")
        lines += [f"  {score:7.2%}  {label}" for label, score in classes]
    return "\n".join(lines)


def format_predictions(image_paths, predictions):
    lines = []
    for path, prediction in zip(image_paths, predictions):
        lines.append(f"{path}:")
        for label, score in zip(prediction["top_k_labels"], prediction["top_k_scores"]):
            lines.append(f"  {score:7.2%}  {label}")
        if FEATURES_OUTPUT in prediction:
            values = prediction[FEATURES_OUTPUT]
            lines.append(
                f"  {FEATURES_OUTPUT} ({len(values)} values): "
                + " ".join(f"{value:.9g}" for value in values)
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument(
        "--server",
        default="http://localhost:8501",
        help="TF Serving's REST address (default: %(default)s)",
    )
    parser.add_argument("--model", default="alexnet", help="model name (default: %(default)s)")
    parser.add_argument("--version", type=int, help="a model version (default: the newest)")
    parser.add_argument(
        "--signature",
        choices=SIGNATURES,
        default="serving_default",
        help="the signature to ask; 'features' also prints each image's fc7 "
        "values on one line (default: %(default)s)",
    )
    parser.add_argument(
        "--classify",
        action="store_true",
        help="ask TF Serving's Classify API (the classify signature), each image "
        "sent as a tf.Example under image/encoded",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the answer (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.classify and args.signature != "serving_default":
        parser.error("--classify asks the classify signature: leave out --signature")
    try:
        if args.classify:
            body = classify_body(args.images)
            results = classify(args.server, args.model, body, args.version, args.timeout)
            print(format_classifications(args.images, results))
            return 0
        body = request_body(args.images, args.signature)
        predictions = predict(args.server, args.model, body, args.version, args.timeout)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_predictions(args.images, predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
