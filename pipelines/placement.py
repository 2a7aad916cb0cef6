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
  (``kic.pipelines.custom_job``), placed by ``kic.pipelines.vertex_training``.
* ``local``: ``kic run`` (kfp.local), which ignores resources but honours
  retries, so it gets none: a user error should fail at once.

Train's GPUs (and, on Vertex AI, its machines) are fixed when the pipeline is
compiled (``ClusterOptions``; ``kic.parameters.TRAIN_MACHINE_PARAMETERS`` says
why): the IR then carries literal accelerator fields, which every Kubeflow
Pipelines backend from 2.0 on reads (2.0-2.3 the ``type``/``count`` fields, 2.4
and later ``resourceType``/``resourceCount``; KFP's compiler writes both for a
literal), and GCPC's wrapper writes train's CustomJob worker pools as its
compile-time default, where Vertex AI expands the executor-input placeholder.
A Vertex AI pipeline compiled with ``train_machines_at_run_time`` takes them as
run parameters instead, through a step that computes the worker pools at run
time: unverified on Vertex AI, and so not the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

TARGETS = ("kfp", "vertex")
LOCAL = "local"


@dataclasses.dataclass(frozen=True)
class Resources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


# Sized from the peak memory each step logs (kic.runtime.steps), measured
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
# Kubeflow Pipelines' own MinIO: the secret its default install keeps the keys in (in the kubeflow namespace,
# and copied into each profile's namespace on multi-user installs), their names in it, and the service.
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"
KFP_MINIO_SECRET_KEYS = ("accesskey", "secretkey")
KFP_MINIO_ENDPOINT = "http://minio-service.kubeflow:9000"
S3_KEY_ENVS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"


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
    # A Kubernetes secret holding an S3 access key pair under s3_secret_keys, set as every step's
    # AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (kfp); and the S3 endpoint of MinIO or another
    # S3-compatible store, as every step's AWS_ENDPOINT_URL_S3 (kfp; empty: AWS's own).
    s3_credentials_secret: str = ""
    s3_secret_keys: tuple[str, str] = KFP_MINIO_SECRET_KEYS
    s3_endpoint: str = ""
    # kfp: prepare's and train's pod deadlines (TIMEOUT_S); Kubeflow Pipelines 2.0.x fails a step that has one.
    step_timeouts: bool = True
    # Train's machines, compiled into the pipeline; None: the target's default (kic.parameters).
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    train_replica_count: int | None = None  # Vertex AI only
    train_machine_type: str | None = None  # Vertex AI only
    # Vertex AI only: the four above as run parameters, through a step that computes the worker pools (unverified).
    train_machines_at_run_time: bool = False

    def __post_init__(self) -> None:
        from kic import parameters

        if self.target not in (*TARGETS, LOCAL):
            raise ValueError(f"target {self.target!r}: one of {', '.join(TARGETS)}")
        kubernetes_only = (self.gpu_node_selector or self.gpu_tolerations or self.gcs_credentials_secret
                           or self.s3_credentials_secret or self.s3_endpoint or not self.step_timeouts)
        if kubernetes_only and self.target != "kfp":
            raise ValueError("node selectors, tolerations, credential secrets and step timeouts are Kubernetes "
                             "settings: target kfp only (Vertex AI places steps itself and uses the job's service "
                             "account)")
        vertex_only = {"train_replica_count": self.train_replica_count, "train_machine_type": self.train_machine_type,
                       "train_machines_at_run_time": self.train_machines_at_run_time or None}
        if self.target != "vertex" and any(value is not None for value in vertex_only.values()):
            given = ", ".join(name for name, value in vertex_only.items() if value is not None)
            raise ValueError(f"{given}: Vertex AI settings (train's CustomJob), target vertex only")
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"S3 endpoint {self.s3_endpoint!r}: a URL, as in {KFP_MINIO_ENDPOINT}")
        if len(self.s3_secret_keys) != 2 or not all(self.s3_secret_keys):
            raise ValueError(f"S3 secret keys {self.s3_secret_keys!r}: the names of the access key id's and the "
                             "secret key's entries in the secret, as in " + ",".join(KFP_MINIO_SECRET_KEYS))
        if self.train_machines_at_run_time and self._given_machines():
            raise ValueError("train's machines are either compiled in or run parameters, not both")
        machines = self.train_machines()
        found = []
        try:
            parameters.validate(machines)
        except parameters.ParameterError as error:
            found += error.problems
        kind = machines.get("accelerator_type", "")
        if machines.get("accelerator_count") and self.target == "kfp" and "/" not in kind:
            found.append(parameters.Problem("accelerator_type", kind, f"a Kubernetes extended resource such as "
                                                                      f"{parameters.KUBERNETES_GPU} on Kubeflow "
                                                                      "Pipelines (Vertex AI's names are no "
                                                                      "resource of a node)"))
        if machines.get("accelerator_count") and self.target == "vertex" and "/" in kind:
            found.append(parameters.Problem("accelerator_type", kind, "a Vertex AI accelerator type such as "
                                                                      f"{parameters.VERTEX_DEFAULT_GPU}"))
        if found:
            raise parameters.ParameterError(found)

    def _given_machines(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _MACHINE_FIELDS if getattr(self, name) is not None}

    def train_machines(self) -> dict[str, Any]:
        """The values of kic.parameters.TRAIN_MACHINE_PARAMETERS compiled into the pipeline (the target's
        defaults where not given); none for kic run and when they are run parameters."""
        from kic import parameters

        if self.target == LOCAL or self.train_machines_at_run_time:
            return {}
        names = [name for name in parameters.TRAIN_MACHINE_PARAMETERS
                 if parameters.PARAMETERS_BY_NAME[name].belongs_to(self.target)]
        return {**{name: parameters.PARAMETERS_BY_NAME[name].default_for(self.target) for name in names},
                **self._given_machines()}

    def run_parameters(self) -> tuple:
        """The run parameters of the pipeline compiled with these options (kic.parameters.Parameter)."""
        from kic import parameters

        return parameters.for_target(self.target, train_machines_at_run_time=self.train_machines_at_run_time)


_MACHINE_FIELDS = ("accelerator_type", "accelerator_count", "train_replica_count", "train_machine_type")


def place(task, step: str, options: ClusterOptions, *, accelerator_type=None, accelerator_count=None):
    """Applies ``step``'s placement on ``options.target`` to a pipeline task;
    the accelerator arguments only for train and the trials: literals when
    compiled in (a count of 0 asks for none), else run parameters."""
    if options.target == LOCAL:
        return task
    resources = STEP_RESOURCES[step]
    task.set_cpu_limit(resources.cpu_limit).set_memory_limit(resources.memory_limit)
    if options.target == "kfp":  # Vertex AI picks a machine from the limits; requests mean nothing there
        task.set_cpu_request(resources.cpu_request).set_memory_request(resources.memory_request)
    gpu = _asks_for_gpus(accelerator_count)
    if gpu:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
    if step in RETRIED_STEPS:
        task.set_retry(**RETRY)
    if options.target == "kfp":
        _kubernetes(task, step, options, gpu=gpu)
    return task


def _asks_for_gpus(count) -> bool:
    """Whether a task asks for GPUs: a count of 1 or more, or a run parameter's (a channel: compared
    with ``==`` it would make a pipeline condition, not a bool)."""
    return count is not None and (not isinstance(count, int) or count > 0)


def _kubernetes(task, step: str, options: ClusterOptions, *, gpu: bool) -> None:
    from kfp import kubernetes

    if step in TIMEOUT_S and options.step_timeouts:
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
    if options.s3_credentials_secret:
        # Optional: without the secret the pod still starts, and kic says which credentials it lacks,
        # where a required one would leave the pod waiting in CreateContainerConfigError.
        kubernetes.use_secret_as_env(task, secret_name=options.s3_credentials_secret, optional=True,
                                     secret_key_to_env=dict(zip(options.s3_secret_keys, S3_KEY_ENVS, strict=True)))
    if options.s3_endpoint:
        task.set_env_variable(S3_ENDPOINT_ENV, options.s3_endpoint)
