"""The same AlexNet in PyTorch, timed as bench/tf_speed.py times ours: the peer of issue 12.

    .venv-peer/bin/python bench/torch_peer.py --threads 2 --training_batch 32
    .venv-peer/bin/python bench/torch_peer.py --smoke   # seconds: that it runs

Runs in its own environment (`make bench-peer` creates `.venv-peer` from
requirements-peer.txt); bench/peer_speed.py runs it alternately with bench/tf_speed.py and
prints the ratios. The network is ours: conv 96-256(2 groups)-384-384(2g)-256(2g), LRN after
the ReLUs of conv1 and conv2 (`LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2)`, which
equals TensorFlow's depth_radius=2, alpha=1e-4: PyTorch divides alpha by size), 3x3/2 max
pools, dropout 0.5, fc 4096-4096-1000, fp32. The step is forward, backward and SGD with
momentum 0.9 and weight decay 5e-4 on the weights (not the biases), as our training step.
Prints one JSON line: images/s of the training step and of inference, medians of the
timed repeats.
"""

import argparse
import json

import torch
from torch import nn

from common import median_seconds, parse_args

IMAGE_SIZE = 227


def alexnet(num_classes=1000, dropout_rate=0.5):
    """The paper's AlexNet (NCHW), layer for layer the network of alexnet_keras.build_alexnet."""
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(inplace=True),  # (batch, 96, 55, 55)
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),  # (batch, 96, 27, 27)
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(inplace=True),
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),  # (batch, 256, 13, 13)
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),  # (batch, 9216)
        nn.Linear(9216, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout_rate),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout_rate),
        nn.Linear(4096, num_classes),
    )


def training_speed(model, batch_size, repeats):
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE) * 255
    labels = torch.randint(0, 1000, (batch_size,))
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": 5e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=1e-3,
        momentum=0.9,
    )
    loss_function = nn.CrossEntropyLoss()
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    return batch_size / median_seconds(step, repeats)


def inference_speed(model, batch_size, repeats):
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE) * 255
    model.eval()

    def predict():
        with torch.inference_mode():
            return model(images).sum().item()

    return batch_size / median_seconds(predict, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--training_batch", type=int, default=32)
    parser.add_argument("--inference_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, argv, smoke=dict(training_batch=2, inference_batch=2, repeats=1))
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = alexnet()
    results = {
        "framework": f"torch {torch.__version__}",
        "threads": args.threads,
        "training_batch": args.training_batch,
        "inference_batch": args.inference_batch,
        "training_images_per_s": training_speed(model, args.training_batch, args.repeats),
        "inference_images_per_s": inference_speed(model, args.inference_batch, args.repeats),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
