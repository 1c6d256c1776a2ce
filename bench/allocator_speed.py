"""TensorFlow's BFC allocator on the CPU (what the project's commands use) against its
default CPU allocator, on our training step and inference, in one run.

    python bench/allocator_speed.py [--rounds 4] [--training_batch 32]
    python bench/allocator_speed.py --smoke         # seconds: that it runs

The allocator is chosen by TF_CPU_ALLOCATOR_USE_BFC when TensorFlow first allocates, so each
setting runs in its own bench/tf_speed.py process, alternately (BFC first in odd rounds, the
default first in even ones). Prints each round, then the medians of the per-round ratios
BFC / default (above 1: BFC is faster). The default allocator takes each large tensor as
fresh pages from the kernel, faulted and zeroed again at every step.
"""

import argparse
import os
import statistics
import sys

from peer_speed import cpu_name, run_worker

from common import parse_args

SETTINGS = {"bfc": "true", "default": "false"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--training_batch", type=int, default=32)
    parser.add_argument("--inference_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    args = parse_args(
        parser, argv, smoke=dict(rounds=1, training_batch=2, inference_batch=2, repeats=1)
    )
    rounds = []
    for round_index in range(args.rounds):
        order = list(SETTINGS) if round_index % 2 == 0 else list(SETTINGS)[::-1]
        figures = {
            name: run_worker(
                sys.executable, "tf_speed.py", args, {"TF_CPU_ALLOCATOR_USE_BFC": SETTINGS[name]}
            )
            for name in order
        }
        rounds.append(figures)
        print(
            f"round {round_index + 1}: "
            + "  ".join(
                f"{name} training {figures[name]['training_images_per_s']:.2f} "
                f"inference {figures[name]['inference_images_per_s']:.2f} images/s"
                for name in SETTINGS
            ),
            flush=True,
        )
    print(
        f"cpu {cpu_name()}, {args.threads} threads, training batch {args.training_batch}, "
        f"inference batch {args.inference_batch}"
    )
    for task in ("training", "inference"):
        key = f"{task}_images_per_s"
        ratio = statistics.median(r["bfc"][key] / r["default"][key] for r in rounds)
        print(
            f"{task}: BFC {statistics.median(r['bfc'][key] for r in rounds):.2f} vs default "
            f"{statistics.median(r['default'][key] for r in rounds):.2f} images/s, "
            f"ratio {ratio:.3f}x"
        )


if __name__ == "__main__":
    main()
