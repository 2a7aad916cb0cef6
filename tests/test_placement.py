"""Where each step runs, as the compiled pipeline says it for Kubeflow Pipelines
and Vertex AI: resources, train's GPU, retries, timeouts, node pools,
credentials; and the snapshot that keeps cached steps honest."""

import pytest
from test_pipeline_spec import load_pipeline_yaml

from kic import parameters
from kic.orchestration import compile as kic_compile
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
    for task, step in STEPS.items():
        resources, expected = _resources(spec, task), STEP_RESOURCES[step]
        assert resources["resourceCpuLimit"] == expected.cpu_limit, task
        assert resources["resourceMemoryLimit"] == expected.memory_limit, task
        # Vertex AI picks a machine from the limits; requests are Kubernetes' notion.
        assert resources.get("resourceCpuRequest") == (expected.cpu_request if target == "kfp" else None), task
        assert resources.get("resourceMemoryRequest") == (expected.memory_request if target == "kfp" else None)


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_train_asks_for_the_gpu_the_run_names(compiled, target):
    spec = compiled[target]
    accelerator = _resources(spec, "train")["accelerator"]
    assert accelerator["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
    train_inputs = _tasks(spec)["train"]["inputs"]["parameters"]
    # The count also reaches the step, which fails at once without the GPUs it asked for. (Not under the
    # name accelerator_count: the KFP compiler adds task inputs of that name for the resource placeholders.)
    assert train_inputs["required_gpus"]["componentInputParameter"] == "accelerator_count"
    assert all("accelerator" not in _resources(spec, task) for task in STEPS if task != "train")


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
