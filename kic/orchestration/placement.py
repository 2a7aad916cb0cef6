"""Where each step runs on a cluster, in each platform's terms: CPU and memory,
the GPU of train, retries, timeouts, GPU node pools and GCS credentials.

Targets:

* ``kfp``: Kubeflow Pipelines. Requests and limits become the pod's
  resources; the GPU is the Kubernetes extended resource ``nvidia.com/gpu``;
  node selectors, tolerations, timeouts and secrets go through kfp-kubernetes.
* ``vertex``: Vertex AI Pipelines, where each step is a CustomJob whose machine
  type is the smallest that meets the CPU and memory limits, and the GPU is an
  accelerator type such as ``NVIDIA_L4`` (which needs a G2 machine: 8 vCPUs
  and 32 GB fit g2-standard-8). Train is the exception: a CustomJob of its
  own on ``train_replica_count`` machines of ``train_machine_type``
  (``kic.orchestration.custom_job``), placed by ``kic.pipelines.vertex_training``.
* ``local``: ``kic run`` (kfp.local), which ignores resources but honours
  retries, so it gets none: a user error should fail at once.

The accelerator type and count are pipeline parameters (``accelerator_type``,
``accelerator_count``): the compiled IR carries them as placeholders, which
Vertex AI Pipelines and Kubeflow Pipelines backends from 2.5 on resolve at run
time (parameterised resource fields came with kubeflow/pipelines#11770).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

TARGETS = ("kfp", "vertex")
LOCAL = "local"


@dataclasses.dataclass(frozen=True)
class Resources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


# Sized from the peak memory each step logs (kic.orchestration.steps), measured
# on the demo data and on 1,000 photos of 500x375 (figures in the README), with
# room for datasets of tens of thousands of images: prepare's memory grows with
# its worker count (one per CPU), not with the dataset (images wait in a spool
# file); train holds at most 2 GiB of decoded images (the input cache budget)
# besides TensorFlow and the model.
STEP_RESOURCES: Mapping[str, Resources] = {
    "validate": Resources("1", "2", "2G", "4G"),
    "snapshot": Resources("1", "2", "1G", "2G"),
    "train_worker_pools": Resources("1", "2", "1G", "2G"),  # Vertex AI: computes train's CustomJob machines
    "prepare": Resources("4", "8", "8G", "16G"),
    "train": Resources("8", "8", "24G", "32G"),
    "evaluate": Resources("4", "4", "8G", "16G"),
    "export": Resources("2", "4", "8G", "16G"),
    "batch_predict": Resources("4", "4", "8G", "16G"),
    # The tuning pipeline's own steps (plan_second_wave is placed as plan_trials); its trials as train.
    "plan_trials": Resources("1", "2", "1G", "2G"),
    "select_best": Resources("1", "2", "1G", "2G"),
}

# Transient failures (a preempted node, an unreachable bucket) get a second and
# a third chance; a user error fails the same way each time, so it costs the backoff.
RETRIED_STEPS = ("prepare", "train")
RETRY = {"num_retries": 2, "backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}
# Kubeflow Pipelines only (a pod's activeDeadlineSeconds); Vertex AI has no per-step timeout.
TIMEOUT_S = {"prepare": 6 * 3600, "train": 72 * 3600}

GCS_CREDENTIALS_DIR = "/var/secrets/google"


@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute
    value: str = ""  # empty: any value (operator Exists)

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """``KEY[=VALUE]:EFFECT``, as kubectl taint writes taints."""
        pair, separator, effect = text.rpartition(":")
        key, _, value = pair.partition("=")
        if not separator or not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"toleration {text!r}: expected KEY[=VALUE]:EFFECT, EFFECT one of NoSchedule, "
                             "PreferNoSchedule, NoExecute")
        return cls(key=key, effect=effect, value=value)


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """What a cluster's operator sets once for their cluster, at compile time."""

    target: str = "kfp"
    gpu_node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)  # train only
    gpu_tolerations: tuple[Toleration, ...] = ()  # train only
    gcs_credentials_secret: str = ""  # a Kubernetes secret holding key.json, mounted into every step (kfp)

    def __post_init__(self) -> None:
        if self.target not in (*TARGETS, LOCAL):
            raise ValueError(f"target {self.target!r}: one of {', '.join(TARGETS)}")
        kubernetes_only = self.gpu_node_selector or self.gpu_tolerations or self.gcs_credentials_secret
        if kubernetes_only and self.target != "kfp":
            raise ValueError("node selectors, tolerations and credential secrets are Kubernetes settings: "
                             "target kfp only (Vertex AI places steps itself and uses the job's service account)")


def place(task, step: str, options: ClusterOptions, *, accelerator_type=None, accelerator_count=None):
    """Applies ``step``'s placement on ``options.target`` to a pipeline task;
    the accelerator arguments (pipeline parameters) only for train."""
    if options.target == LOCAL:
        return task
    resources = STEP_RESOURCES[step]
    task.set_cpu_limit(resources.cpu_limit).set_memory_limit(resources.memory_limit)
    if options.target == "kfp":  # Vertex AI picks a machine from the limits; requests mean nothing there
        task.set_cpu_request(resources.cpu_request).set_memory_request(resources.memory_request)
    if accelerator_type is not None:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
    if step in RETRIED_STEPS:
        task.set_retry(**RETRY)
    if options.target == "kfp":
        _kubernetes(task, step, options, gpu=accelerator_type is not None)
    return task


def _kubernetes(task, step: str, options: ClusterOptions, *, gpu: bool) -> None:
    from kfp import kubernetes

    if step in TIMEOUT_S:
        kubernetes.set_timeout(task, TIMEOUT_S[step])
    if gpu:
        for key, value in options.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in options.gpu_tolerations:
            kubernetes.add_toleration(task, key=toleration.key, operator="Equal" if toleration.value else "Exists",
                                      value=toleration.value or None, effect=toleration.effect)
    if options.gcs_credentials_secret:
        kubernetes.use_secret_as_volume(task, secret_name=options.gcs_credentials_secret,
                                        mount_path=GCS_CREDENTIALS_DIR)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_CREDENTIALS_DIR}/key.json")
