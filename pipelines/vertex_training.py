"""Vertex AI only: train as a CustomJob on train's machines
(``kic.pipelines.custom_job``). Compiling needs Google Cloud Pipeline
Components (``kic[vertex]``), as the Model Registry step does.

By default the machines are compiled in: GCPC's wrapper writes the worker
pools as the default of the launcher's ``worker_pool_specs`` input, the one
place where Vertex AI is documented to expand the executor-input placeholder
of each replica's command. With ``train_machines_at_run_time`` the
train-worker-pools step computes the pools from the run parameters and the
launcher takes them as a run-time value; that Vertex AI expands the
placeholder there too is not documented, so that variant is opt-in and
unverified."""

from kfp import dsl

from kic.components.image import CPU_IMAGE
from kic.pipeline_names import WORKER_POOLS_TASK
from kic.pipelines import custom_job
from kic.pipelines.placement import RETRY, TIMEOUT_S, ClusterOptions, place


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_worker_pools(container: dict, replica_count: int, machine_type: str, accelerator_type: str,
                       accelerator_count: int) -> list:
    """The worker pools of train's Vertex AI CustomJob: the chief, then the other replicas, on the same machines."""
    from kic.pipelines import custom_job

    return custom_job.worker_pools(container, replica_count=replica_count, machine_type=machine_type,
                                   accelerator_type=accelerator_type, accelerator_count=accelerator_count)


class TrainJob:
    """Made before the pipeline's body runs: GCPC's wrapper fails when called
    after a task has been created in the pipeline (kubeflow/pipelines#9320)."""

    def __init__(self, train_component, cluster: ClusterOptions):
        self.cluster = cluster
        machines = cluster.train_machines()
        self.job = custom_job.custom_job(train_component, timeout_s=TIMEOUT_S["train"], machines=machines or None)
        self.container = None if machines else custom_job.container(self.job)

    def __call__(self, p: dict, **train_arguments):
        """The train task: a CustomJob on the machines compiled in, or on those the run parameters name."""
        if self.container is None:
            return self.job(**train_arguments).set_retry(**RETRY)
        pools = place(train_worker_pools(
            container=self.container, replica_count=p["train_replica_count"], machine_type=p["train_machine_type"],
            accelerator_type=p["accelerator_type"], accelerator_count=p["accelerator_count"],
        ), "train_worker_pools", self.cluster).set_display_name(WORKER_POOLS_TASK)
        # The launcher only waits for the job: no resources of its own; the job's retries are the task's.
        return self.job(worker_pool_specs=pools.output, **train_arguments).set_retry(**RETRY)
