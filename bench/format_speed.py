"""The network's speed in each format on this CPU: the SavedModel's `predict_pixels`, LiteRT
float (XNNPACK), LiteRT with int8 weights (`--quantize weights`) and ONNX Runtime.

    python bench/format_speed.py                       # paper network, 1000 classes
    python bench/format_speed.py --model runs/demo/alexnet.keras --data_dir datasets/synthetic/records
    python bench/format_speed.py --smoke               # seconds: that it runs

Each file is written by the export command's library function (`serving.export_model`,
`portable.write_portable`), then the four answer the same float32 pixels in one process,
alternated (`common.alternate`), at batch 1 (latency) and batch 32 (throughput). Every runtime
gets all the CPU's cores. Given --data_dir, also the top-1 agreement of each file with the
Keras model on the records' validation split (the quantized files' accuracy cost), and of
`--quantize int8`, calibrated on the training split.
"""

import argparse
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from common import (  # also puts the checkout on sys.path
    SMOKE_CLASSES,
    SMOKE_WIDTH,
    alternate,
    cpu_name,
    parse_args,
    print_results,
)

from alexnet_keras import (
    build_alexnet,
    input_pipeline,
    litert,
    onnx_format,
    portable,
    portable_contract,
    serving,
)
from alexnet_keras_base.layout import VALIDATION, DataDir

SAVED_MODEL = "SavedModel predict_pixels"
FILES = {
    "LiteRT float": ("alexnet.tflite", None, litert),
    "LiteRT weights": ("alexnet_weights.tflite", portable_contract.QUANTIZE_WEIGHTS, litert),
    "ONNX Runtime": ("alexnet.onnx", None, onnx_format),
}


def validation_images(data_dir, limit):
    dataset = input_pipeline.make_eval_dataset(DataDir(data_dir).shard_pattern(VALIDATION), 64)
    return np.concatenate([images.numpy() for images, _ in dataset])[:limit]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a .keras file (default: a new network)")
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--data_dir", help="records: the top-1 agreement on their validation split")
    parser.add_argument("--rounds", type=int, default=15)
    args = parse_args(
        parser,
        argv,
        smoke={
            "model": None,
            "width_multiplier": SMOKE_WIDTH,
            "num_classes": SMOKE_CLASSES,
            "rounds": 2,
        },
    )
    if args.model:
        model = keras.models.load_model(args.model)
    else:
        model = build_alexnet(num_classes=args.num_classes, width_multiplier=args.width_multiplier)
    num_classes = model.output.shape[-1]
    labels = [f"class_{index}" for index in range(num_classes)]
    threads = os.cpu_count()
    results = {"cpu": cpu_name(), "threads": threads, "model": args.model or "new network"}
    results["network_width"] = args.width_multiplier if not args.model else "the model's"
    quiet = {"log": lambda message: None}
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        export = serving.export_model(model, folder / "alexnet", labels, **quiet)
        signature = tf.saved_model.load(str(export)).signatures[serving.PREDICT_PIXELS]
        runners = {SAVED_MODEL: lambda images: signature(images=images)["probabilities"].numpy()}
        for name, (file_name, quantize, module) in FILES.items():
            portable.write_portable(model, folder / file_name, labels, quantize, **quiet)
            content = (folder / file_name).read_bytes()
            results[f"{name}: file MB"] = len(content) / 1e6
            runners[name] = module.runner(content, num_threads=threads)
        for batch_size in (1, 32):
            pixels = portable_contract.check_images(seed=1, count=batch_size)
            medians, ratios = alternate(
                {name: (lambda run=run: run(pixels)) for name, run in runners.items()},
                args.rounds,
            )
            for name, seconds in medians.items():
                results[f"batch {batch_size}: {name} images/s"] = batch_size / seconds
                if name in ratios:
                    results[f"batch {batch_size}: {name} / SavedModel speed"] = 1 / ratios[name]
        if args.data_dir:
            images = validation_images(args.data_dir, limit=1000)
            int8 = folder / "alexnet_int8.tflite"
            portable.write_portable(model, int8, labels, "int8", args.data_dir, **quiet)
            runners["LiteRT int8"] = litert.runner(int8.read_bytes(), num_threads=threads)
            expected = model.predict(images, batch_size=32, verbose=0).argmax(axis=1)
            results["validation images"] = len(images)
            for name, run in runners.items():
                top1 = np.concatenate([run(images[i : i + 32]) for i in range(0, len(images), 32)])
                results[f"top-1 equal to Keras: {name}"] = float(
                    np.mean(top1.argmax(1) == expected)
                )
    print_results(results)


if __name__ == "__main__":
    main()
