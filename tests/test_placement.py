"""Where each step runs, as the compiled pipeline says it for Kubeflow Pipelines
and Vertex AI: resources, train's GPU, retries, timeouts, node pools,
credentials; and the snapshot that keeps cached steps honest."""

import pytest
from test_pipeline_spec import load_pipeline_yaml

from kic import parameters
from kic.orchestration import compile as kic_compile
from kic.orchestration import custom_job
from kic.orchestration.placement import RETRIED_STEPS, STEP_RESOURCES, TIMEOUT_S, ClusterOptions, Toleration

STEPS = {"validate": "validate", "snapshot": "snapshot", "prepare": "prepare", "train": "train",
         "evaluate": "evaluate", "export": "export", "batch-predict": "batch_predict"}


def _compile(tmp_path, target, cluster=None):
    return load_pipeline_yaml(kic_compile.compile_pipeline(str(tmp_path / f"{target}.yaml"), target, cluster))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    return {target: _compile(root, target) for target in ("kfp", "vertex", "local")}


def _tasks(spec) -> dict:
    """Every task of the pipeline, those inside conditions too."""
    found = {}
    for component in [spec["root"], *spec["components"].values()]:
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def _resources(spec, task) -> dict:
    executor = spec["components"][_tasks(spec)[task]["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][executor]["container"].get("resources", {})


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_every_step_has_its_cpu_and_memory(compiled, target):
    spec = compiled[target]
    # On Vertex AI train is a CustomJob on the machines the run names (below); its task only waits for it.
    steps = {**STEPS, "train-worker-pools": "train_worker_pools"} if target == "vertex" else STEPS
    for task, step in steps.items():
        if target == "vertex" and task == "train":
            assert _resources(spec, task) == {}
            continue
        resources, expected = _resources(spec, task), STEP_RESOURCES[step]
        assert resources["resourceCpuLimit"] == expected.cpu_limit, task
        assert resources["resourceMemoryLimit"] == expected.memory_limit, task
        # Vertex AI picks a machine from the limits; requests are Kubernetes' notion.
        assert resources.get("resourceCpuRequest") == (expected.cpu_request if target == "kfp" else None), task
        assert resources.get("resourceMemoryRequest") == (expected.memory_request if target == "kfp" else None)


def test_train_asks_for_the_gpu_the_run_names(compiled, target="kfp"):
    spec = compiled[target]
    accelerator = _resources(spec, "train")["accelerator"]
    assert accelerator["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
    train_inputs = _tasks(spec)["train"]["inputs"]["parameters"]
    # The count also reaches the step, which fails at once without the GPUs it asked for. (Not under the
    # name accelerator_count: the KFP compiler adds task inputs of that name for the resource placeholders.)
    assert train_inputs["required_gpus"]["componentInputParameter"] == "accelerator_count"
    assert all("accelerator" not in _resources(spec, task) for task in STEPS if task != "train")


def test_vertex_runs_train_as_a_custom_job_on_the_machines_the_run_names(compiled):
    """Every replica runs train's own container; the replica count, machine type and GPUs come from the pipeline
    parameters, through the worker-pools step whose own code (as the IR holds it) builds the job's worker pools."""
    spec, kfp_spec = compiled["vertex"], compiled["kfp"]
    tasks = _tasks(spec)
    train_task, pools_task = tasks["train"], tasks["train-worker-pools"]
    launcher = spec["deploymentSpec"]["executors"][spec["components"]["comp-train"]["executorLabel"]]["container"]
    assert launcher["command"][-1] == "google_cloud_pipeline_components.container.v1.custom_job.launcher"
    payload = launcher["args"][launcher["args"].index("--payload") + 1]
    assert "\"worker_pool_specs\": {{$.inputs.parameters['worker_pool_specs']}}" in payload
    assert train_task["inputs"]["parameters"]["worker_pool_specs"] == {
        "taskOutputParameter": {"producerTask": "train-worker-pools", "outputParameterKey": "Output"}}
    assert train_task["retryPolicy"]["maxRetryCount"] == 2
    job_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    # As the pipeline's service account (which reads the data), not Vertex AI's custom code service agent.
    assert job_inputs["service_account"]["defaultValue"] == "{{$.pipeline_service_account}}"
    assert job_inputs["restart_job_on_worker_restart"]["defaultValue"] is True
    assert job_inputs["timeout"]["defaultValue"] == f"{TIMEOUT_S['train']}s"
    # The wrapped op keeps train's inputs and outputs: evaluate reads the Model artifact from the train task.
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "producerTask": "train", "outputArtifactKey": "model"}
    assert train_task["inputs"]["parameters"]["required_gpus"]["componentInputParameter"] == "accelerator_count"
    pools_inputs = pools_task["inputs"]["parameters"]
    assert {name: pools_inputs[name]["componentInputParameter"] for name in (
        "replica_count", "machine_type", "accelerator_type", "accelerator_count")} == {
        "replica_count": "train_replica_count", "machine_type": "train_machine_type",
        "accelerator_type": "accelerator_type", "accelerator_count": "accelerator_count"}
    pipeline_inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert pipeline_inputs["train_replica_count"]["defaultValue"] == 1
    assert pipeline_inputs["train_machine_type"]["defaultValue"] == ""

    # The container the worker pools carry is the train component's, the executor input set aside.
    container = pools_inputs["container"]["runtimeValue"]["constant"]
    train_container = kfp_spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["image_uri"] == train_container["image"] and container["command"] == train_container["command"]
    assert container["args"] == [custom_job.EXECUTOR_INPUT_MARKER if part == "{{$}}" else part
                                 for part in train_container["args"]]

    # The step's own code, as the container runs it.
    executor = spec["deploymentSpec"]["executors"][spec["components"]["comp-train-worker-pools"]["executorLabel"]]
    namespace: dict = {}
    exec(executor["container"]["command"][-1], namespace)  # noqa: S102 (the compiled component's source)
    step = namespace["train_worker_pools"]
    pools = step(container=container, replica_count=3, machine_type="a2-highgpu-2g",
                 accelerator_type="NVIDIA_TESLA_A100", accelerator_count=2)
    assert [pool["replica_count"] for pool in pools] == [1, 2]  # the chief alone, then the workers
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100",
                                        "accelerator_count": 2}
        assert pool["container_spec"]["image_uri"] == train_container["image"]
        assert pool["container_spec"]["command"] == train_container["command"]
        # What the launcher fills with train's executor input, JSON-escaped into its payload.
        assert pool["container_spec"]["args"] == [custom_job.ESCAPED_EXECUTOR_INPUT if part == "{{$}}" else part
                                                  for part in train_container["args"]]
    # The defaults: one replica on the smallest machine for one NVIDIA_L4; no GPU: no accelerator at all.
    [one] = step(container=container, replica_count=1, machine_type="", accelerator_type="NVIDIA_L4",
                 accelerator_count=1)
    assert one["replica_count"] == 1 and one["machine_spec"] == {
        "machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
    [cpu] = step(container=container, replica_count=1, machine_type="n1-standard-16", accelerator_type="NVIDIA_L4",
                 accelerator_count=0)
    assert cpu["machine_spec"] == {"machine_type": "n1-standard-16"}


def test_the_custom_job_settings_are_checked_by_the_front_door():
    vertex = {"data_source": "gs://bucket/images"}
    values = parameters.resolve(vertex, {"train_replica_count": "4", "accelerator_type": "NVIDIA_H100_80GB",
                                         "accelerator_count": "8"}, reachability=False, target="vertex")
    assert values["train_replica_count"] == 4 and values["train_machine_type"] == ""
    parameters.resolve(vertex, {"train_machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB",
                                "accelerator_count": "8"}, reachability=False, target="vertex")
    with pytest.raises(parameters.ParameterError) as error:
        parameters.resolve(vertex, {"train_replica_count": "0", "train_machine_type": "G2 standard"},
                           reachability=False, target="vertex")
    assert [problem.name for problem in error.value.problems] == ["train_replica_count", "train_machine_type"]
    cases = {  # settings -> the problem's parameter and what it says
        ("g2-standard-8", "NVIDIA_TESLA_A100", 1): ("train_machine_type", "a2-highgpu-* or a2-megagpu-*"),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 1): ("accelerator_count", "a2-highgpu-2g has 2 GPUs"),
        ("g2-standard-8", "NVIDIA_L4", 0): ("train_machine_type", "comes with GPUs"),
        ("", "NVIDIA_L4", 3): ("train_machine_type", "no machine known here for 3 NVIDIA_L4"),
    }
    for (machine, kind, count), (name, says) in cases.items():
        with pytest.raises(parameters.ParameterError) as error:
            parameters.resolve(vertex, {"train_machine_type": machine, "accelerator_type": kind,
                                        "accelerator_count": count}, reachability=False, target="vertex")
        [problem] = error.value.problems
        assert problem.name == name and says in problem.expected, (machine, kind, count, problem)
    # Vertex AI's pipeline only; Kubeflow Pipelines' GPU and this machine's none are not Vertex AI machines.
    with pytest.raises(parameters.ParameterError, match="only the Vertex AI pipeline has this parameter"):
        parameters.resolve(vertex, {"train_replica_count": 2}, reachability=False, target="kfp")
    parameters.resolve(vertex, {"accelerator_count": 4}, reachability=False, target="kfp")
    parameters.resolve(vertex, reachability=False, target="local")


def test_prepare_and_train_are_retried_with_backoff(compiled):
    tasks = _tasks(compiled["kfp"])
    for task, step in STEPS.items():
        policy = tasks[task].get("retryPolicy")
        if step in RETRIED_STEPS:
            assert policy == {"backoffDuration": "60s", "backoffFactor": 2.0, "backoffMaxDuration": "1800s",
                              "maxRetryCount": 2}, task
        else:
            assert policy is None, task


def test_kubeflow_gets_timeouts_and_vertex_no_kubernetes_settings(compiled):
    executors = compiled["kfp"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name: int(config["activeDeadlineSeconds"]) for name, config in executors.items()} == {
        f"exec-{step}": seconds for step, seconds in TIMEOUT_S.items()}
    assert "platforms" not in compiled["vertex"]


def test_a_local_run_is_not_placed_and_not_retried(compiled):
    spec = compiled["local"]
    assert all(not _resources(spec, task) for task in STEPS)
    assert all("retryPolicy" not in task for task in _tasks(spec).values())
    # Only the defaults of the cluster targets ask for a GPU.
    assert spec["root"]["inputDefinitions"]["parameters"]["accelerator_count"]["defaultValue"] == 0


def test_gpu_node_pool_and_credentials_for_kubeflow(tmp_path):
    cluster = ClusterOptions(target="kfp", gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                             gpu_tolerations=(Toleration.parse("nvidia.com/gpu=present:NoSchedule"),
                                              Toleration.parse("spot:NoExecute")),
                             gcs_credentials_secret="gcs-key")
    executors = _compile(tmp_path, "kfp", cluster)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train"]
    assert train["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    assert train["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"}]
    for step in STEPS.values():
        executor = executors[f"exec-{step.replace('_', '-')}"]
        assert executor["secretAsVolume"][0]["secretName"] == "gcs-key", step
        if step != "train":
            assert "nodeSelector" not in executor and "tolerations" not in executor, step


def test_kubernetes_settings_are_refused_for_vertex_and_tolerations_are_checked():
    with pytest.raises(ValueError, match="target kfp only"):
        ClusterOptions(target="vertex", gpu_node_selector={"a": "b"})
    with pytest.raises(ValueError, match="KEY\\[=VALUE\\]:EFFECT"):
        Toleration.parse("nvidia.com/gpu=present")


def test_fresh_data_reaches_the_cache_keys_and_each_run_publishes(compiled):
    tasks = _tasks(compiled["kfp"])
    assert tasks["snapshot"]["cachingOptions"] == {} and tasks["snapshot"]["dependentTasks"] == ["validate"]
    fed = {"prepare": ("source_fingerprint", "data"), "train": ("base_model_fingerprint", "base_model"),
           "evaluate": ("baseline_fingerprint", "baseline_model")}
    for task, (input_name, output) in fed.items():
        assert tasks[task]["inputs"]["parameters"][input_name]["taskOutputParameter"] == {
            "producerTask": "snapshot", "outputParameterKey": output}, task
        assert tasks[task]["cachingOptions"] == {"enableCache": True}
    assert tasks["export"]["cachingOptions"] == {}
    assert tasks["export"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == \
        "{{$.pipeline_job_uuid}}"


def test_accelerator_parameters_are_checked_by_the_front_door():
    parameters.validate({"accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2})
    parameters.validate({"accelerator_type": "", "accelerator_count": 0})
    with pytest.raises(parameters.ParameterError) as error:
        parameters.validate({"accelerator_type": "TPU_V3", "accelerator_count": -1})
    assert "0 (no GPU asked for) or more" in str(error.value)
    with pytest.raises(parameters.ParameterError, match="TensorFlow here runs on NVIDIA GPUs"):
        parameters.validate({"accelerator_type": "amd.com/gpu", "accelerator_count": 1})


# ------------------------------------------------------------------ the tuning pipeline
TUNING_STEPS = {**{task: step for task, step in STEPS.items() if step != "train"}, "plan-trials": "plan_trials",
                "plan-second-wave": "plan_trials", "trial": "train", "trial-2": "train", "select-best": "select_best"}


@pytest.fixture(scope="module")
def tuning(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning-placement")
    return {target: load_pipeline_yaml(kic_compile.compile_tuning_pipeline(str(root / f"{target}.yaml"), target))
            for target in ("kfp", "vertex", "local")}


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_each_trial_is_placed_as_train_is_and_the_tuning_steps_get_their_own(tuning, target):
    spec = tuning[target]
    for task, step in TUNING_STEPS.items():
        resources, expected = _resources(spec, task), STEP_RESOURCES[step]
        assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == (
            expected.cpu_limit, expected.memory_limit), task
        if step == "train":
            assert resources["accelerator"]["resourceCount"] == (
                "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"), task
            assert _tasks(spec)[task]["retryPolicy"]["maxRetryCount"] == 2
        else:
            assert "accelerator" not in resources, task


def test_trials_get_trains_timeout_on_kubeflow_and_nothing_is_placed_locally(tuning):
    executors = tuning["kfp"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name: int(config["activeDeadlineSeconds"]) for name, config in executors.items()} == {
        "exec-prepare": TIMEOUT_S["prepare"], "exec-trial": TIMEOUT_S["train"], "exec-trial-2": TIMEOUT_S["train"]}
    assert all(not _resources(tuning["local"], task) for task in TUNING_STEPS)
    assert all("retryPolicy" not in task for task in _tasks(tuning["local"]).values())
