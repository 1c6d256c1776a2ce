"""The strategy of a run and its cluster: MirroredStrategy over a machine's devices, or
MultiWorkerMirroredStrategy when TF_CONFIG names several workers; which worker is the chief;
and what a worker that lost a peer says."""

import json
import os
import re

import tensorflow as tf

# Private, as ParameterServerStrategy uses them: the one way to give the coordination service
# of MultiWorkerMirroredStrategy a heartbeat timeout (the strategy configures the service
# itself, with TensorFlow's defaults, only when it is not configured yet).
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

from alexnet_keras_base.config import DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
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


def select_strategy(devices=None, heartbeat_timeout_seconds=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS):
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, its coordination service
    declaring a task lost after `heartbeat_timeout_seconds` without heartbeats; otherwise
    MirroredStrategy over `devices` (default: all GPUs, or the CPU when there is none)."""
    tf_config = cluster_spec_from_environment()
    if tf_config is not None:
        if devices:
            raise UsageError("--devices cannot be combined with a multi-worker TF_CONFIG")
        _configure_coordination_service(tf_config, heartbeat_timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy()
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


def _configure_coordination_service(tf_config, heartbeat_timeout_seconds):
    """What MultiWorkerMirroredStrategy would configure, with our heartbeat timeout."""
    cluster = tf_config.get("cluster", {})
    if tf_config.get("task", {}).get("type") not in COORDINATED_JOBS:
        return  # the strategy starts no service agent on other tasks (an evaluator)
    leader_type, leader_index = coordination_leader(tf_config)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_type}/replica:0/task:{leader_index}",
        heartbeat_timeout_in_ms=int(heartbeat_timeout_seconds * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in COORDINATED_JOBS
            if job in cluster
        ],
    )


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
    TF_CONFIG's cluster; an unanswered call to the coordination service names its host."""
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
    service_lost = service_call is not None and not named - {own} and leader != own
    if service_lost:
        named.add(leader)
    lost = [
        f"{task_type} {index} ({address})"
        for task_type, addresses in tf_config.get("cluster", {}).items()
        for index, address in enumerate(addresses)
        if (task_type, index) != own and ((task_type, index) in named or address in error.message)
    ]
    reason = next(
        (
            line.split("aborted by:", 1)[1].strip(" :")
            for line in error.message.splitlines()
            if "aborted by:" in line
        ),
        error.message.strip().splitlines()[0],
    )
    if service_call is not None:
        reason = f"{service_call.group(1).lower()} to the coordination service: {reason}"
    latest = tf.train.latest_checkpoint(str(RunDir(model_dir).checkpoints_dir))
    resume = (
        f"rerunning every worker resumes from {latest} (step "
        f"{int(tf.train.load_variable(latest, 'step/.ATTRIBUTES/VARIABLE_VALUE'))})"
        if latest
        else "no checkpoint was saved yet: rerunning every worker starts over"
    )
    host = ", the host of its coordination service," if service_lost else ""
    when = "start-up" if steps_done is None else f"step {steps_done + 1}"
    return PeerLost(
        f"lost {' and '.join(lost) or 'a worker'} of the cluster{host} during {when} ({reason}); "
        f"{resume}"
    )
