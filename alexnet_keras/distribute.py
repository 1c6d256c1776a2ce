"""The strategy of a run and its cluster: MirroredStrategy over a machine's devices, or
MultiWorkerMirroredStrategy when TF_CONFIG names several workers; which worker is the chief;
and what a worker that lost a peer says."""

import contextlib
import json
import os
import re
import socket
import threading
import time

import tensorflow as tf

# Private, as ParameterServerStrategy uses them: the one way to give the coordination service
# of MultiWorkerMirroredStrategy a heartbeat timeout (the strategy configures the service
# itself, with TensorFlow's defaults, only when it is not configured yet).
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

from alexnet_keras_base.config import (
    DEFAULT_CLUSTER_START_TIMEOUT_SECONDS,
    DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
)
from alexnet_keras_base.errors import PeerLost, UsageError
from alexnet_keras_base.layout import RunDir

COLLECTIVE_KEYS_PER_STRATEGY = 100_000
# The jobs of a cluster whose tasks the coordination service watches (the strategy's own
# list); its leader, which hosts the service, is the chief, or worker 0 without one.
COORDINATED_JOBS = ("chief", "worker")

# What a multi-worker step or start-up raises when a peer, or the coordination service, is
# out of reach: UnavailableError when the service saw a task stop sending heartbeats (or a
# peer refused a connection), DeadlineExceededError on the worker whose heartbeats went
# unanswered (a network partition's other side), AbortedError when the service saw a task
# come back as a new process. Each aborts every collective of the worker that sees it.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
)
COORDINATION_SERVICE_RPC = "/tensorflow.CoordinationService/"


def cluster_spec_from_environment():
    """The TF_CONFIG cluster, or None when there is none (or a single task)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except ValueError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = tf_config.get("cluster", {})
    tasks = sum(len(addresses) for addresses in cluster.values())
    return tf_config if tasks > 1 else None


def coordination_leader(tf_config):
    """(task type, index) of the task that hosts the coordination service."""
    return ("chief", 0) if "chief" in tf_config.get("cluster", {}) else ("worker", 0)


def select_strategy(
    devices=None,
    heartbeat_timeout_seconds=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    start_timeout_seconds=DEFAULT_CLUSTER_START_TIMEOUT_SECONDS,
    model_dir=None,
):
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, its coordination service
    declaring a task lost after `heartbeat_timeout_seconds` without heartbeats, and PeerLost
    when this worker could not register with it within `start_timeout_seconds` (TensorFlow's
    default: an hour), or, on the service's host, when the others did not all start within
    it; otherwise MirroredStrategy over `devices` (default: all GPUs, or the CPU when there is
    none)."""
    tf_config = cluster_spec_from_environment()
    if tf_config is not None:
        if devices:
            raise UsageError("--devices cannot be combined with a multi-worker TF_CONFIG")
        _configure_coordination_service(tf_config, heartbeat_timeout_seconds, start_timeout_seconds)
        started = time.monotonic()
        own = tf_config.get("task", {})
        if coordination_leader(tf_config) == (own.get("type"), own.get("index")):
            _await_the_others(tf_config, start_timeout_seconds, model_dir)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except PEER_ERRORS as error:  # the service's host, or a worker, never answered
            seconds = time.monotonic() - started
            # Our timeout, or another end: the host's own wait (an hour), a peer restarting.
            within = (
                f"within {start_timeout_seconds:g} s"
                if seconds >= start_timeout_seconds
                else f"in {seconds:.0f} s ({error.message.strip().splitlines()[0]})"
            )
            raise _not_formed(_unreachable(tf_config), within, model_dir) from None
    # Each MirroredStrategy numbers its collectives from the same start, and the process's
    # collective executor remembers each number's shape: a second strategy in one process (a
    # fine-tuning after a training, in a notebook or the tests) whose gradients have other
    # shapes would fail with "Shape mismatch in the collective instance". Give each its own
    # range (TensorFlow's own tests do the same).
    tf.distribute.MirroredStrategy._collective_key_base += COLLECTIVE_KEYS_PER_STRATEGY
    if devices:
        available = {_canonical_device(device.name) for device in tf.config.list_logical_devices()}
        for device in devices:
            if _canonical_device(device) not in available:
                raise UsageError(
                    f"unknown device {device!r}; this machine has: {', '.join(sorted(available))}"
                )
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=["/cpu:0"])


def _configure_coordination_service(tf_config, heartbeat_timeout_seconds, start_timeout_seconds):
    """What MultiWorkerMirroredStrategy would configure, with our heartbeat timeout and how
    long a worker tries to register with the service."""
    cluster = tf_config.get("cluster", {})
    if tf_config.get("task", {}).get("type") not in COORDINATED_JOBS:
        return  # the strategy configures no coordination service on other tasks (an evaluator)
    leader_type, leader_index = coordination_leader(tf_config)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_type}/replica:0/task:{leader_index}",
        heartbeat_timeout_in_ms=int(heartbeat_timeout_seconds * 1000),
        cluster_register_timeout_in_ms=int(start_timeout_seconds * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in COORDINATED_JOBS
            if job in cluster
        ],
    )


def _unreachable(tf_config, timeout_seconds=2.0):
    """The other tasks of the cluster that nothing answers at (a TCP connection to each),
    each said with why."""
    own = tf_config.get("task", {})
    said = []
    for job in COORDINATED_JOBS:
        for index, address in enumerate(tf_config.get("cluster", {}).get(job, [])):
            if (job, index) == (own.get("type"), own.get("index")):
                continue
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout_seconds).close()
            except ConnectionRefusedError:
                said.append(f"{job} {index} ({address}): nothing listens there")
            except (OSError, ValueError) as error:
                said.append(f"{job} {index} ({address}): no answer ({error})")
    return said


def _not_formed(said, within, model_dir):
    """PeerLost for a cluster that did not form, naming the tasks `said` (_unreachable's)."""
    return PeerLost(
        f"the cluster did not form {within}: "
        + (
            "; ".join(said)
            or "every other worker listens, but not all joined (does each TF_CONFIG name the "
            "same cluster?)"
        )
        + "; start every worker that TF_CONFIG names (or give them longer with "
        f"--cluster_start_timeout_seconds); {resume_text(model_dir)}"
    )


def _await_the_others(tf_config, timeout_seconds, model_dir):
    """On the host of the coordination service, before the strategy is made: waits until
    every other task listens at its address (each starts its server first thing, then tries
    to register with the service), or raises PeerLost once `timeout_seconds` have passed.
    TensorFlow's own wait for them lasts an hour and holds the interpreter's lock: no Python
    timer can end it, and SIGTERM goes to TensorFlow's preemption notifier."""
    deadline = time.monotonic() + timeout_seconds
    while said := _unreachable(tf_config):
        if time.monotonic() >= deadline:
            raise _not_formed(said, f"within {timeout_seconds:g} s", model_dir)
        time.sleep(1)


class PeerWatch:
    """While open, asks every other task of the cluster at once, every half heartbeat timeout,
    whether it is alive, and aborts this worker's collectives when some do not answer within
    the timeout. The coordination service's heartbeats only tell whether each worker reaches the
    chief: two workers cut off from each other but not from the chief would otherwise wait
    for each other in a collective forever. The abort names the peer, as PeerLost does."""

    def __init__(self, tf_config, heartbeat_timeout_seconds):
        own = tf_config.get("task", {})
        self.peers = [
            f"/job:{job}/replica:0/task:{index}"
            for job in COORDINATED_JOBS
            for index in range(len(tf_config.get("cluster", {}).get(job, [])))
            if (job, index) != (own.get("type"), own.get("index"))
        ]
        self.timeout_seconds = heartbeat_timeout_seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="PeerWatch", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exception):
        self.stopped.set()  # not joined: a question in flight ends on its own timeout

    def _watch(self):
        while not self.stopped.wait(self.timeout_seconds / 2):
            silent = {}  # peer -> the first line of its error
            askers = [
                threading.Thread(target=self._ask, args=(peer, silent), daemon=True)
                for peer in self.peers
            ]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join()
            if silent and not self.stopped.is_set():
                context.context().abort_collective_ops(
                    tf.errors.UNAVAILABLE,
                    " and ".join(sorted(silent))
                    + f" did not answer a health check within {self.timeout_seconds:g} s: "
                    + next(iter(silent.values())),
                )
                return

    def _ask(self, peer, silent):
        """Asks `peer` whether it is alive; notes it in `silent` when it does not answer."""
        try:
            context.context().check_collective_ops_peer_health(
                peer, timeout_in_ms=int(self.timeout_seconds * 1000)
            )
        except tf.errors.OpError as error:
            silent[peer] = (error.message.strip().splitlines() or [""])[0]


def watch_peers(strategy, heartbeat_timeout_seconds):
    """A PeerWatch for a MultiWorkerMirroredStrategy's cluster; nothing for other strategies."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return contextlib.nullcontext()
    return PeerWatch(cluster_spec_from_environment(), heartbeat_timeout_seconds)


def _canonical_device(name):
    """'/job:localhost/replica:0/task:0/device:GPU:0' and 'gpu:0' -> '/gpu:0'."""
    name = name.lower().replace("/job:localhost/replica:0/task:0", "").replace("device:", "")
    return name if name.startswith("/") else "/" + name


def is_chief(strategy):
    """True on the one worker that writes final artifacts."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def peer_lost(error, steps_done, model_dir):
    """PeerLost for one of PEER_ERRORS: a collective could not reach a worker, or the
    coordination service, in a step (after `steps_done` steps) or, with steps_done None,
    while the workers start (the variables' first values, the checkpoint check). Names it
    from the error's task (/job:worker/replica:0/task:1) or address, both looked up in
    TF_CONFIG's cluster; an unanswered call to the coordination service names its host, and
    the message says which lost worker hosted the service."""
    tf_config = cluster_spec_from_environment() or {}
    own = tf_config.get("task", {})
    own = (own.get("type"), own.get("index"))
    named = {
        (task_type, int(index))
        for task_type, index in re.findall(
            r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)\b", error.message
        )
    }
    service_call = re.search(re.escape(COORDINATION_SERVICE_RPC) + r"(\w+)", error.message)
    leader = coordination_leader(tf_config)
    if service_call is not None and not named - {own}:
        named.add(leader)  # its host did not answer
    lost = [
        f"{task_type} {index} ({address})"
        for task_type, addresses in tf_config.get("cluster", {}).items()
        for index, address in enumerate(addresses)
        if (task_type, index) != own and ((task_type, index) in named or address in error.message)
    ]
    reason = next(
        (
            line.rsplit("aborted by:", 1)[1].strip(" :")
            for line in error.message.splitlines()
            if "aborted by:" in line
        ),
        error.message.strip().splitlines()[0],
    )
    if service_call is not None:
        reason = f"{service_call.group(1).lower()} to the coordination service: {reason}"
    resume = resume_text(model_dir)
    host = ""
    if leader != own and leader in named and lost:
        host = (
            ", the host of its coordination service,"
            if len(lost) == 1
            else f", {leader[0]} {leader[1]} the host of its coordination service,"
        )
    when = "start-up" if steps_done is None else f"step {steps_done + 1}"
    return PeerLost(
        f"lost {' and '.join(lost) or 'a worker'} of the cluster{host} during {when} ({reason}); "
        f"{resume}"
    )


def resume_text(model_dir):
    """What rerunning every worker of a multi-worker run does, from `model_dir`'s latest
    checkpoint."""
    latest = model_dir and tf.train.latest_checkpoint(str(RunDir(model_dir).checkpoints_dir))
    if not latest:
        return "no checkpoint was saved yet: rerunning every worker starts over"
    step = int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    return f"rerunning every worker resumes from {latest} (step {step})"
