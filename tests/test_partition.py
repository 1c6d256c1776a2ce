"""A network partition of a multi-worker run, made for real: each worker in a network
namespace of its own, its link joined to the others' by a bridge in one more namespace. One
link set down cuts a worker off without a word (no RST, no FIN), as a machine that drops off
the network does. Whatever its side, every worker must exit with PeerLost's status and one
message naming what it lost and what a rerun resumes from, and none may hang. Needs root
(`ip netns`): skipped, with the reason, where it cannot make namespaces."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import tensorflow as tf
from test_training import (
    TINY,
    Worker,
    checkpoint_value,
    latest_checkpoint,
    stop_cluster,
    tiny_flags,
)

from alexnet_keras import distribute
from alexnet_keras_base.errors import PeerLost, UsageError

# Short, so that each side notices the partition within seconds (TensorFlow's default is 10 s).
HEARTBEAT_TIMEOUT_SECONDS = 4
# A worker notices within one and a half heartbeat timeouts (docs/troubleshooting.md); the
# rest of this bound is the process ending, slow on a loaded machine. A worker blocked for
# good in a collective overruns it.
EXIT_WITHIN_SECONDS = 60
START_WITHIN_SECONDS = 300
PORT = 23456


def ip(*arguments):
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True)
    if result.returncode:
        raise OSError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


@pytest.fixture(scope="module")
def namespaces_allowed():
    """Skips unless this process may make network namespaces."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to make network namespaces")
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables to cut two workers off from each other only")
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces (`ip netns add`)")
    probe = f"alexnet-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except OSError as error:
        pytest.skip(f"cannot make network namespaces here: {error}")
    ip("netns", "del", probe)


class Network:
    """`size` namespaces, one per worker, with the address 10.213.SUBNET.(index + 1)/24 on
    its `eth0`, whose other end is a port of a bridge in one more namespace."""

    def __init__(self, size, subnet):
        prefix = f"alexnet-{os.getpid()}-{subnet}"
        self.workers = [f"{prefix}-worker{index}" for index in range(size)]
        self.bridge = f"{prefix}-bridge"
        self.addresses = [f"10.213.{subnet}.{index + 1}" for index in range(size)]

    def __enter__(self):
        try:
            for namespace in (self.bridge, *self.workers):
                ip("netns", "add", namespace)
                ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", self.bridge, "link", "add", "bridge0", "type", "bridge")
            ip("-n", self.bridge, "link", "set", "bridge0", "up")
            for index, namespace in enumerate(self.workers):
                port = f"port{index}"
                # Made inside the namespaces: no name of the host's own is ever taken.
                ip(
                    *("link", "add", "eth0", "netns", namespace, "type", "veth"),
                    *("peer", "name", port, "netns", self.bridge),
                )
                ip("-n", namespace, "addr", "add", f"{self.addresses[index]}/24", "dev", "eth0")
                ip("-n", namespace, "link", "set", "eth0", "up")
                ip("-n", self.bridge, "link", "set", port, "master", "bridge0")
                ip("-n", self.bridge, "link", "set", port, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def launcher(self, index):
        return ("ip", "netns", "exec", self.workers[index])

    def cut(self, index):
        """Worker `index` off the network: its bridge port down, not a packet more."""
        ip("-n", self.bridge, "link", "set", f"port{index}", "down")

    def separate(self, first, second):
        """Workers `first` and `second` cut off from each other only: each drops the other's
        packets, and both still reach the rest."""
        for index, other in ((first, second), (second, first)):
            for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
                rule = ("-A", chain, side, self.addresses[other], "-j", "DROP")
                ip("netns", "exec", self.workers[index], "iptables", *rule)

    def __exit__(self, *exception):
        for namespace in (*self.workers, self.bridge):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class Cluster:
    """train.py on each worker of a Network, which `cut(network)` cuts (cut_and_wait)."""

    def __init__(self, network, cut, arguments, temporary_dir, python, repo_root):
        self.network, self.cut_network = network, cut
        cluster = {"worker": [f"{address}:{PORT}" for address in network.addresses]}
        temporary_dir.mkdir(parents=True)
        self.workers = [
            Worker(
                python, repo_root, arguments, cluster, index, temporary_dir, network.launcher(index)
            )
            for index in range(len(network.addresses))
        ]
        self.cut_at = None
        self.ended_after = {}  # worker index -> seconds from the cut to its exit

    def cut(self):
        self.cut_network(self.network)
        self.cut_at = time.monotonic()

    def note_exits(self):
        for index, worker in enumerate(self.workers):
            if index not in self.ended_after and worker.process.poll() is not None:
                self.ended_after[index] = time.monotonic() - self.cut_at

    def message(self, index):
        """Worker `index`'s one 'error: lost' line, after checking its status and output."""
        worker = self.workers[index]
        output = worker.output
        assert worker.process.returncode == PeerLost.exit_code, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        (message,) = [line for line in output.splitlines() if line.startswith("error: lost")]
        return message

    def address(self, index):
        return self.workers[index].address


def cut_and_wait(clusters_and_moments):
    """Cuts each cluster once `moment(cluster)` is true, and waits for all its workers to end,
    each within EXIT_WITHIN_SECONDS of the cut."""
    deadline = time.monotonic() + START_WITHIN_SECONDS
    clusters = [cluster for cluster, _ in clusters_and_moments]
    while any(len(cluster.ended_after) < len(cluster.workers) for cluster in clusters):
        for cluster, moment in clusters_and_moments:
            if cluster.cut_at is None:
                if any(worker.process.poll() is not None for worker in cluster.workers):
                    outputs = [worker.output[-2000:] for worker in cluster.workers]
                    raise AssertionError(f"a worker ended before the cut: {outputs}")
                assert time.monotonic() < deadline, "a cluster never came to the moment of its cut"
                if moment(cluster):
                    cluster.cut()
                continue
            cluster.note_exits()
            if time.monotonic() - cluster.cut_at > EXIT_WITHIN_SECONDS:
                hung = set(range(len(cluster.workers))) - set(cluster.ended_after)
                assert not hung, f"workers {hung} still run {EXIT_WITHIN_SECONDS} s after the cut"
        time.sleep(0.05)
    for cluster in clusters:
        for worker in cluster.workers:
            worker.finish()


def step_and_resume(message):
    """(the step it names, the rest after 'rerunning every worker resumes from ')."""
    match = re.search(
        r" during step (\d+) \(.*\); rerunning every worker resumes from (.*)$", message
    )
    assert match, message
    return int(match.group(1)), match.group(2)


def resume_of(model_dir):
    latest = latest_checkpoint(model_dir)
    return latest, f"{latest} (step {checkpoint_value(latest, 'step')})"


@pytest.mark.slow
def test_every_worker_on_either_side_of_a_partition_exits_with_the_retryable_status(
    namespaces_allowed, synthetic_records, tmp_path, python, repo_root
):
    """Three clusters at once, to overlap their waits. Two workers, worker 1 cut off after
    the first checkpoint: the chief names it, and worker 1 names the chief, the coordination
    service's host. Three workers, the chief cut off as the strategy is made, before the
    first step, so that the side left with the chief is the small one: it names both others,
    and both name the chief. Three workers, 1 and 2 cut off from each other only after the
    first checkpoint: the heartbeats to the chief go on, and each names the other (without
    PeerWatch, both waited in the step's collective for good)."""
    # Epochs enough that the training never ends before the cut; 4 images per replica.
    config = TINY.replace(epochs=30, checkpoint_every_steps=1)
    model_dirs = {name: tmp_path / name / "model" for name in ("training", "startup", "between")}
    with (
        Network(2, subnet=1) as pair,
        Network(3, subnet=2) as trio,
        Network(3, subnet=3) as split_trio,
    ):
        plans = {
            "training": (pair, lambda network: network.cut(1), "checkpoint"),
            "startup": (trio, lambda network: network.cut(0), "strategy: MultiWorker"),
            "between": (split_trio, lambda network: network.separate(1, 2), "checkpoint"),
        }
        clusters = {}
        try:
            for name, (network, cut, _) in plans.items():
                arguments = [
                    *("--data_dir", synthetic_records, "--model_dir", model_dirs[name]),
                    *tiny_flags(config.replace(global_batch_size=4 * len(network.addresses))),
                    *("--heartbeat_timeout_seconds", HEARTBEAT_TIMEOUT_SECONDS),
                ]
                clusters[name] = Cluster(
                    network, cut, arguments, tmp_path / name / "tmp", python, repo_root
                )
            cut_and_wait(
                [
                    (
                        clusters[name],
                        lambda cluster, name=name, moment=moment: (
                            latest_checkpoint(model_dirs[name])
                            if moment == "checkpoint"
                            else moment in cluster.workers[0].output
                        ),
                    )
                    for name, (_, _, moment) in plans.items()
                ]
            )
        finally:
            for cluster in clusters.values():
                stop_cluster(cluster.workers)
    print(
        "seconds from the cut to each worker's exit:",
        {name: cluster.ended_after for name, cluster in clusters.items()},
    )
    service_lost = "of the cluster, the host of its coordination service, during"
    # Whichever comes first: the heartbeat to the chief's coordination service, or the
    # worker's own health check of the chief (PeerWatch).
    chief_silent = (
        r" \((heartbeat to the coordination service: Deadline Exceeded|/job:worker/replica:0/"
        rf"task:0 did not answer a health check within {HEARTBEAT_TIMEOUT_SECONDS} s: .*)\); "
    )

    pair = clusters["training"]
    latest, resume = resume_of(model_dirs["training"])
    chief, cut_off = pair.message(0), pair.message(1)
    assert chief.startswith(f"error: lost worker 1 ({pair.address(1)}) of the cluster during step ")
    assert cut_off.startswith(f"error: lost worker 0 ({pair.address(0)}) {service_lost} step ")
    assert re.search(chief_silent, cut_off), cut_off
    for message in (chief, cut_off):
        step, resumed_from = step_and_resume(message)
        assert step > checkpoint_value(latest, "step") >= 1, message
        assert resumed_from == resume, message

    trio = clusters["startup"]
    no_checkpoint = "no checkpoint was saved yet: rerunning every worker starts over"
    chief = trio.message(0)
    # Both or the first it noticed: the heartbeats of each, and the answers, come apart.
    others = [f"worker {index} ({trio.address(index)})" for index in (1, 2)]
    assert any(
        chief.startswith(f"error: lost {lost} of the cluster during start-up (")
        for lost in (*others, " and ".join(others))
    ), chief
    assert chief.endswith(no_checkpoint), chief
    for index in (1, 2):
        message = trio.message(index)
        assert message.startswith(
            f"error: lost worker 0 ({trio.address(0)}) {service_lost} start-up ("
        ), message
        assert re.search(chief_silent + re.escape(no_checkpoint) + "$", message), message

    split = clusters["between"]
    latest, resume = resume_of(model_dirs["between"])
    for index, other in ((1, 2), (2, 1)):
        # Each names the other. On a loaded machine the chief, busy aborting, may also miss
        # one health check of 4 s and be named beside it (seen once in a clean-clone run).
        message = split.message(index)
        lost = message.partition(" of the cluster")[0]
        assert message.startswith("error: lost worker "), message
        assert f"worker {other} ({split.address(other)})" in lost, message
        assert f"did not answer a health check within {HEARTBEAT_TIMEOUT_SECONDS} s: " in message
    # The chief reached both: it learns of the split from them, and names them.
    assert re.match(r"error: lost worker [12] \(", split.message(0)), split.message(0)
    for index in range(3):
        step, resumed_from = step_and_resume(split.message(index))
        assert step > checkpoint_value(latest, "step") >= 1, split.message(index)
        assert resumed_from == resume, split.message(index)


# What each side of a partition raised, as TensorFlow worded it (the test above makes them).
CUT_OFF_SIDE = (
    "Graph execution error:\n\nDetected at node paper_sgd/CollectiveReduceV2 defined at ...\n\n"
    "Collective ops is aborted by: Deadline Exceeded\n\n"
    "RPC: /tensorflow.CoordinationService/Heartbeat\n"
    "The error could be from a previous operation. Restart your program to reset.\n"
    "\t [[{{node paper_sgd/CollectiveReduceV2}}]] [Op:__inference_train_step_2118]"
)
CHIEF_SIDE = (
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks "
    "are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks "
    "have crashed. Check the task logs for an earlier error, or scheduler events (e.g. "
    "preemption, eviction) to debug further."
)

UNANSWERED = (
    "Collective ops is aborted by: /job:worker/replica:0/task:{} did not answer a health "
    "check within 4 s: Deadline Exceeded\nThe error could be from a previous operation."
)


@pytest.mark.parametrize(
    "cluster, own, error, lost",
    [
        (
            {"worker": ["h0:1", "h1:1"]},
            ("worker", 1),
            tf.errors.DeadlineExceededError(None, None, CUT_OFF_SIDE),
            "lost worker 0 (h0:1) of the cluster, the host of its coordination service, "
            "during step 5 (heartbeat to the coordination service: Deadline Exceeded)",
        ),
        (  # a chief of its own hosts the service, not worker 0
            {"chief": ["c:1"], "worker": ["h0:1"]},
            ("worker", 0),
            tf.errors.DeadlineExceededError(None, None, CUT_OFF_SIDE),
            "lost chief 0 (c:1) of the cluster, the host of its coordination service, "
            "during step 5 (heartbeat to the coordination service: Deadline Exceeded)",
        ),
        (  # the chief silent to a worker's own health check
            {"worker": ["h0:1", "h1:1", "h2:1"]},
            ("worker", 1),
            tf.errors.UnavailableError(None, None, UNANSWERED.format(0)),
            "lost worker 0 (h0:1) of the cluster, the host of its coordination service, during "
            "step 5 (/job:worker/replica:0/task:0 did not answer a health check within 4 s: "
            "Deadline Exceeded)",
        ),
        (  # two workers that lost each other, not the chief
            {"worker": ["h0:1", "h1:1", "h2:1"]},
            ("worker", 1),
            tf.errors.UnavailableError(None, None, UNANSWERED.format(2)),
            "lost worker 2 (h2:1) of the cluster during step 5 (/job:worker/replica:0/task:2 did "
            "not answer a health check within 4 s: Deadline Exceeded)",
        ),
        (
            {"worker": ["h0:1", "h1:1"]},
            ("worker", 0),
            tf.errors.UnavailableError(None, None, CHIEF_SIDE),
            "lost worker 1 (h1:1) of the cluster during step 5 (Error reported from "
            "/job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats))",
        ),
    ],
)
def test_a_lost_peer_or_coordination_service_is_named(
    cluster, own, error, lost, tmp_path, monkeypatch
):
    """The messages of the partition test, for each side, and for a cluster with a chief."""
    task = {"type": own[0], "index": own[1]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert isinstance(error, distribute.PEER_ERRORS)
    message = str(distribute.peer_lost(error, 4, tmp_path))
    assert message == f"{lost}; no checkpoint was saved yet: rerunning every worker starts over"


def test_a_timeout_below_a_second_or_beyond_a_week_is_refused():
    """Below a second is a mistake (milliseconds meant?): each heartbeat would wait < 0.5 s;
    beyond a week (or inf, nan) TensorFlow's whole milliseconds would overflow or mean nothing."""
    with pytest.raises(
        UsageError, match="heartbeat_timeout_seconds must be >= 1 and <= 604800, got 0.5"
    ):
        TINY.replace(heartbeat_timeout_seconds=0.5)
    # Neither timeout may be what TensorFlow's milliseconds cannot hold.
    for name in ("heartbeat_timeout_seconds", "cluster_start_timeout_seconds"):
        for value in (float("inf"), float("nan"), 1e17, 0.0001):
            with pytest.raises(UsageError, match=f"{name} must be >= 1 and <= 604800, got"):
                TINY.replace(**{name: value})
