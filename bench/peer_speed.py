"""Our AlexNet against the same network in PyTorch, on the same CPU, in one run (issue 12).

    make bench-peer                       # creates .venv-peer, then runs this
    .venv/bin/python bench/peer_speed.py --rounds 3 --training_batch 32
    .venv/bin/python bench/peer_speed.py --smoke    # seconds: that it runs

Runs bench/tf_speed.py (with this Python) and bench/torch_peer.py (with the peer
environment's) as alternating subprocesses, TF first in odd rounds and PyTorch first in even
ones, each pinned to the same number of intra-op threads and one inter-op thread, so that
the two frameworks never compete for the cores and a drift of the shared machine falls on
both. Prints each round's figures, then the medians over rounds of the images/s and of the
per-round ratios TF / PyTorch (above 1: ours is faster).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

from common import cpu_name, parse_args

BENCH = pathlib.Path(__file__).resolve().parent
CHECKOUT = BENCH.parent


def run_worker(python, script, args, environment=None):
    """Runs one benchmark process (with `environment` added to this one's); returns the JSON
    line it printed last. With `args.smoke`, the process runs its own --smoke sizes."""
    command = [
        str(python),
        str(BENCH / script),
        "--threads",
        str(args.threads),
        "--training_batch",
        str(args.training_batch),
        "--inference_batch",
        str(args.inference_batch),
        "--repeats",
        str(args.repeats),
        *(["--smoke"] if args.smoke else []),
    ]
    environment = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        TF_CPP_MIN_LOG_LEVEL="3",
        **(environment or {}),
    )
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--peer_python",
        default=str(CHECKOUT / ".venv-peer" / "bin" / "python"),
        help="the Python of the environment with torch (make bench-peer)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--training_batch", type=int, default=32)
    parser.add_argument("--inference_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    args = parse_args(
        parser, argv, smoke=dict(rounds=1, training_batch=2, inference_batch=2, repeats=1)
    )
    if not pathlib.Path(args.peer_python).exists():
        sys.exit(f"no {args.peer_python}: create the peer environment with `make bench-peer`")

    workers = {"tf": (sys.executable, "tf_speed.py"), "torch": (args.peer_python, "torch_peer.py")}
    rounds = []
    for round_index in range(args.rounds):
        order = ("tf", "torch") if round_index % 2 == 0 else ("torch", "tf")
        figures = {name: run_worker(*workers[name], args) for name in order}
        rounds.append(figures)
        print(
            f"round {round_index + 1}: "
            + "  ".join(
                f"{name} training {figures[name]['training_images_per_s']:.2f} "
                f"inference {figures[name]['inference_images_per_s']:.2f} images/s"
                for name in ("tf", "torch")
            ),
            flush=True,
        )

    results = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "rounds": args.rounds,
        "training_batch": args.training_batch,
        "inference_batch": args.inference_batch,
        "tf": rounds[0]["tf"]["framework"],
        "torch": rounds[0]["torch"]["framework"],
    }
    for task in ("training", "inference"):
        key = f"{task}_images_per_s"
        for name in ("tf", "torch"):
            results[f"{name}_{key}"] = statistics.median(r[name][key] for r in rounds)
        results[f"{task}_tf_over_torch"] = statistics.median(
            r["tf"][key] / r["torch"][key] for r in rounds
        )
    for key, value in results.items():
        print(f"{key:36s} {value:.3f}" if isinstance(value, float) else f"{key:36s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
