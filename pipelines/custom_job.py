"""Vertex AI only: train as a CustomJob of one or more replicas, each on a
machine with the same GPUs, every replica running the same train container.

Built with Google Cloud Pipeline Components' wrapper
(``create_custom_training_job_from_component``), which turns the train
component into a task that launches a CustomJob and carries the component's
inputs and outputs (the Model artifact) over. By default the wrapper fixes
the job's worker pools when the pipeline is compiled (``custom_job`` with
``machines``): the chief alone in the first pool, ``replica_count - 1``
workers in a second, each replica's command holding the executor-input
placeholder that Vertex AI expands in that compile-time default, as GCPC
documents. Which machine carries which GPUs, and the checks of those values,
are ``kic.vertex_machines`` (KFP-free, for the front door).

The run-time variant (``ClusterOptions.train_machines_at_run_time``) gives
the task's ``worker_pool_specs`` input from the small step
``train-worker-pools`` (``worker_pools``), computed from the run parameters.
A step rather than placeholders in a constant, because Vertex AI wants the
primary replica alone in the first pool, and that arithmetic has no
placeholder. The container spec reaches that step with the executor-input
placeholder replaced by ``EXECUTOR_INPUT_MARKER`` (a placeholder in a step's
input is resolved for that step), and the step puts it back in its output,
for the launcher to resolve with train's. Whether Vertex AI expands a
placeholder inside a value an upstream task produced is not documented: that
variant is unverified.

Vertex AI sets CLUSTER_SPEC and TF_CONFIG in every replica (the first pool is
the chief, the second the workers), which is what train reads to train one
model across them with MultiWorkerMirroredStrategy. Every replica runs the
KFP executor with the same executor input, so every replica would write the
same output artifacts: only the chief's may (the others write elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kic.vertex_machines import default_machine_type

ESCAPED_EXECUTOR_INPUT = "{{$.json_escape[1]}}"  # the executor input inside the launcher's JSON payload
EXECUTOR_INPUT_MARKER = "<kic:executor-input>"
BOOT_DISK = {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100}  # the wrapper's default disk


def custom_job(component, *, timeout_s: int, machines: Mapping[str, Any] | None = None):
    """``component`` (train) as a task that runs it as a Vertex AI CustomJob.
    ``machines`` (the values of kic.parameters.TRAIN_MACHINE_PARAMETERS)
    become the worker pools the wrapper compiles in; without them the task's
    ``worker_pool_specs`` input must be given at run time (``worker_pools``),
    and the wrapper's default (one n1-standard-4) is never used.

    A worker restarted on its own would wait for the others' collectives, so
    a restart restarts the whole job (which then resumes from its checkpoint).
    The job runs as the pipeline's service account and in its network (the
    wrapper's defaults are Vertex AI's custom code service agent, which may
    not read the data, and no network)."""
    from google_cloud_pipeline_components import _placeholders
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    pools = {}
    if machines:
        count = machines["accelerator_count"]
        pools = dict(replica_count=machines["train_replica_count"],
                     machine_type=machines["train_machine_type"] or default_machine_type(
                         machines["accelerator_type"], count),
                     # Vertex AI refuses a type without a count and the other way round
                     accelerator_type=machines["accelerator_type"] if count else "", accelerator_count=count,
                     **BOOT_DISK)
    return create_custom_training_job_from_component(
        component, timeout=f"{timeout_s}s", restart_job_on_worker_restart=True,
        service_account=_placeholders.SERVICE_ACCOUNT_PLACEHOLDER, network=_placeholders.NETWORK_PLACEHOLDER,
        **pools)


def container(job) -> dict[str, Any]:
    """The container spec every replica of ``job`` (a ``custom_job``) runs,
    with the executor input as ``EXECUTOR_INPUT_MARKER``, to pass through the
    worker-pools step."""
    [pool] = job.component_spec.inputs["worker_pool_specs"].default
    spec = pool["container_spec"]
    spec = {**spec, "command": _swap(spec["command"], ESCAPED_EXECUTOR_INPUT, EXECUTOR_INPUT_MARKER),
            "args": _swap(spec["args"], ESCAPED_EXECUTOR_INPUT, EXECUTOR_INPUT_MARKER)}
    if "{{$" in json.dumps(spec):  # any other placeholder would be resolved for the worker-pools step
        raise ValueError(f"the train container has a placeholder besides the executor input: {spec}")
    return spec


def worker_pools(container_spec: Mapping[str, Any], *, replica_count: int, machine_type: str, accelerator_type: str,
                 accelerator_count: int) -> list[dict[str, Any]]:
    """The CustomJob's worker pools: the chief alone in the first, the other
    ``replica_count - 1`` replicas in the second (none for one replica); the
    same machine (empty ``machine_type``: ``default_machine_type``), GPUs and
    container in both."""
    machine: dict[str, Any] = {"machine_type": machine_type or default_machine_type(accelerator_type,
                                                                                  accelerator_count)}
    if accelerator_count:  # Vertex AI refuses a type without a count and the other way round
        machine.update(accelerator_type=accelerator_type, accelerator_count=accelerator_count)
    spec = {**container_spec,
            "command": _swap(container_spec.get("command", []), EXECUTOR_INPUT_MARKER, ESCAPED_EXECUTOR_INPUT),
            "args": _swap(container_spec.get("args", []), EXECUTOR_INPUT_MARKER, ESCAPED_EXECUTOR_INPUT)}
    chief = {"machine_spec": machine, "replica_count": 1, "container_spec": spec, "disk_spec": dict(BOOT_DISK)}
    return [chief] + ([{**chief, "replica_count": replica_count - 1}] if replica_count > 1 else [])


def _swap(parts: Sequence[str], old: str, new: str) -> list[str]:
    return [new if part == old else part for part in parts]
