"""Sends image files to a TensorFlow Serving REST endpoint and prints the top-5 classes.

    python export/client.py --server http://localhost:8501 --model alexnet cat.jpg dog.png

The images go in one request to the model's `serving_default` signature, as
{"instances": [{"b64": "<base64 of the file>"}, ...]}: the server decodes and preprocesses
them. `--signature features` asks for the `features` signature instead, which also answers
each image's fc7 activations (4096 values at the paper's width), printed on a line after its
top 5. Only the Python standard library is used, so this file can be copied anywhere.
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


class ClientError(Exception):
    """The request could not be made or was refused; the message says why."""


def request_body(image_paths, signature="serving_default"):
    """The REST predict body for `signature`: one base64 instance per image file."""
    instances = []
    for path in image_paths:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ClientError(f"{path} is not a file")
        instances.append({"b64": base64.b64encode(path.read_bytes()).decode("ascii")})
    return {"signature_name": signature, "instances": instances}


def predict(server, model, body, version=None, timeout=60.0):
    """POSTs `body` to `server`'s predict endpoint for `model`; returns the predictions."""
    model_path = f"{model}/versions/{version}" if version else model
    url = f"{server.rstrip('/')}/v1/models/{model_path}:predict"
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
    if "predictions" not in answer:
        raise ClientError(f"{url} answered without predictions: {str(answer)[:500]}")
    return answer["predictions"]


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
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the answer (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        body = request_body(args.images, args.signature)
        predictions = predict(args.server, args.model, body, args.version, args.timeout)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_predictions(args.images, predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
