"""Which tf.distribute strategy trains, and whether this process is the one
that writes the outputs.

* Several machines: the platforms describe the cluster in the environment,
  and every replica runs the same command. The Kubeflow training operator
  (TFJob) and Vertex AI set ``TF_CONFIG``; Vertex AI also sets
  ``CLUSTER_SPEC`` (its worker pools), read when ``TF_CONFIG`` is absent.
  With more than one chief or worker: MultiWorkerMirroredStrategy, one model
  trained across them, the chief (the ``chief`` task, else worker 0) writing
  the outputs.
* Several GPUs on this machine: MirroredStrategy.
* Otherwise the default strategy.

MultiWorkerMirroredStrategy configures TensorFlow's collective ops, which is
only possible before the runtime starts: ``choose`` is called before any
tensor or variable exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import tensorflow as tf

from kic import compat
from kic.errors import UserError

TF_CONFIG = "TF_CONFIG"
CLUSTER_SPEC = "CLUSTER_SPEC"
# Vertex AI's worker pools, in order, as TF_CONFIG's task types
# (https://cloud.google.com/vertex-ai/docs/training/distributed-training).
VERTEX_POOL_ROLES = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps",
                     "workerpool3": "evaluator"}
TRAINING_ROLES = ("chief", "worker")


class ClusterError(UserError):
    """TF_CONFIG or CLUSTER_SPEC that kic cannot train with."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The multi-worker cluster as TF_CONFIG gives it, and this task's place in it."""

    spec: dict[str, list[str]]  # task type -> addresses
    task_type: str
    task_index: int

    @property
    def workers(self) -> list[str]:
        """The training tasks, chief first: the order of the input shards."""
        return [*self.spec.get("chief", []), *self.spec.get("worker", [])]

    @property
    def worker_index(self) -> int:
        return self.task_index + (len(self.spec.get("chief", [])) if self.task_type == "worker" else 0)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.spec.get("chief"))


def cluster_from_environment(environment: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster that TF_CONFIG (or, without it, Vertex AI's CLUSTER_SPEC)
    describes, when it has more than one training task; else None."""
    environment = os.environ if environment is None else environment
    if environment.get(TF_CONFIG):
        cluster = _parse(environment[TF_CONFIG], TF_CONFIG, roles=None)
    elif environment.get(CLUSTER_SPEC):
        cluster = _parse(environment[CLUSTER_SPEC], CLUSTER_SPEC, roles=VERTEX_POOL_ROLES)
    else:
        return None
    if len(cluster.workers) < 2:
        return None
    if cluster.task_type not in TRAINING_ROLES:
        raise ClusterError(f"this task is a {cluster.task_type!r}; kic trains with MultiWorkerMirroredStrategy, "
                           f"where every task is a chief or a worker (no parameter servers or evaluators)")
    return cluster


def _parse(text: str, variable: str, roles: Mapping[str, str] | None) -> Cluster:
    try:
        document = json.loads(text)
        spec = {str(kind): list(addresses) for kind, addresses in document.get("cluster", {}).items()}
        task_type, task_index = str(document["task"]["type"]), int(document["task"].get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ClusterError(f"{variable} is not a cluster description ({error!r}): expected "
                           '{"cluster": {TYPE: [HOST:PORT, ...]}, "task": {"type": TYPE, "index": N}}') from None
    if roles is not None:  # Vertex AI's pools as TF_CONFIG's roles
        spec = {roles.get(pool, pool): addresses for pool, addresses in spec.items() if addresses}
        task_type = roles.get(task_type, task_type)
    if task_index >= len(spec.get(task_type, [])):
        raise ClusterError(f"{variable}: task {task_type}:{task_index} is not in its cluster {sorted(spec)}")
    return Cluster(spec=spec, task_type=task_type, task_index=task_index)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy, how many workers (processes) and replicas (devices in
    all) it trains on, and this worker's place among them."""

    strategy: tf.distribute.Strategy
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def describe(self) -> str:
        # By the names they are made by (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy).
        name = "MultiWorkerMirroredStrategy" if self.num_workers > 1 else type(self.strategy).__name__
        if self.num_workers > 1:
            role = "chief" if self.is_chief else "not the chief: its outputs are discarded"
            return (f"{name} over {self.num_workers} workers, {self.num_replicas} replicas in all; this is worker "
                    f"{self.worker_index} ({role})")
        if self.num_replicas > 1:
            return f"{name} over {self.num_replicas} local replicas"
        return "one device (the default strategy)"


def choose(environment: Mapping[str, str] | None = None) -> Distribution:
    """The strategy for this process (see the module's docstring)."""
    cluster = cluster_from_environment(environment)
    if cluster is not None:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({kind: addresses for kind, addresses in cluster.spec.items()
                                  if kind in TRAINING_ROLES}),
            task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc")
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        return Distribution(strategy, num_workers=len(cluster.workers), worker_index=cluster.worker_index,
                            is_chief=cluster.is_chief)
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return Distribution(tf.distribute.MirroredStrategy())
    return Distribution(tf.distribute.get_strategy())


def fix_keras_for_multi_worker(model) -> None:
    """Lets ``model`` fit under MultiWorkerMirroredStrategy, which Keras 3
    alone cannot do: two narrow patches of Keras internals, kept with their
    upstream issues and the releases they were checked on (a release not
    checked is refused) in kic.compat (KERAS_MULTI_WORKER)."""
    compat.patch_keras_for_multi_worker(model)
