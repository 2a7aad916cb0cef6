"""Where each step runs, as the compiled pipeline says it for Kubeflow Pipelines
and Vertex AI: resources, train's GPU, retries, timeouts, node pools,
credentials; and the snapshot that keeps cached steps honest."""

import pytest
from test_pipeline_spec import load_pipeline_yaml

from kic import parameters, vertex_machines
from kic.orchestration import compile as kic_compile
from kic.pipelines import custom_job
from kic.pipelines.placement import RETRIED_STEPS, STEP_RESOURCES, TIMEOUT_S, ClusterOptions, Toleration

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
        if target == "vertex" and task == "train":
            # On Vertex AI train is a CustomJob on its own machines (below); its task only waits for it.
            assert _resources(spec, task) == {}
            continue
        resources, expected = _resources(spec, task), STEP_RESOURCES[step]
        assert resources["resourceCpuLimit"] == expected.cpu_limit, task
        assert resources["resourceMemoryLimit"] == expected.memory_limit, task
        # Vertex AI picks a machine from the limits; requests are Kubernetes' notion.
        assert resources.get("resourceCpuRequest") == (expected.cpu_request if target == "kfp" else None), task
        assert resources.get("resourceMemoryRequest") == (expected.memory_request if target == "kfp" else None)


def test_train_gets_its_gpus_compiled_in_and_told_how_many_it_must_see(compiled, tmp_path):
    spec = compiled["kfp"]
    assert _resources(spec, "train")["accelerator"] == {"type": "nvidia.com/gpu", "count": "1",
                                                        "resourceType": "nvidia.com/gpu", "resourceCount": "1"}
    # Not run parameters: a run could not change what the pod asks for.
    assert not set(parameters.TRAIN_MACHINE_PARAMETERS) & set(spec["root"]["inputDefinitions"]["parameters"])
    # The count also reaches the step, which fails at once without the GPUs it asked for.
    assert _tasks(spec)["train"]["inputs"]["parameters"]["required_gpus"]["runtimeValue"]["constant"] == 1
    assert all("accelerator" not in _resources(spec, task) for task in STEPS if task != "train")

    two = _compile(tmp_path, "kfp", ClusterOptions(target="kfp", accelerator_count=2))
    assert _resources(two, "train")["accelerator"]["count"] == "2"
    assert _tasks(two)["train"]["inputs"]["parameters"]["required_gpus"]["runtimeValue"]["constant"] == 2
    cpu = _compile(tmp_path, "kfp", ClusterOptions(target="kfp", accelerator_count=0))
    assert "accelerator" not in _resources(cpu, "train")
    with pytest.raises(parameters.ParameterError, match="TensorFlow here runs on NVIDIA GPUs"):
        ClusterOptions(target="kfp", accelerator_type="amd.com/gpu")
    with pytest.raises(ValueError, match="target vertex only"):
        ClusterOptions(target="kfp", train_replica_count=2)


def _worker_pools(spec) -> list:
    return spec["components"]["comp-train"]["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]


def test_vertex_runs_train_as_a_custom_job_on_machines_compiled_in(compiled, tmp_path):
    """GCPC's wrapper writes the worker pools as its compile-time default, the one place where Vertex AI is
    documented to expand each replica's executor-input placeholder."""
    spec, kfp_spec = compiled["vertex"], compiled["kfp"]
    tasks = _tasks(spec)
    train_task = tasks["train"]
    assert "train-worker-pools" not in tasks and "worker_pool_specs" not in train_task["inputs"]["parameters"]
    launcher = spec["deploymentSpec"]["executors"][spec["components"]["comp-train"]["executorLabel"]]["container"]
    assert launcher["command"][-1] == "google_cloud_pipeline_components.container.v1.custom_job.launcher"
    payload = launcher["args"][launcher["args"].index("--payload") + 1]
    assert "\"worker_pool_specs\": {{$.inputs.parameters['worker_pool_specs']}}" in payload
    assert train_task["retryPolicy"]["maxRetryCount"] == 2
    job_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    # As the pipeline's service account (which reads the data), not Vertex AI's custom code service agent.
    assert job_inputs["service_account"]["defaultValue"] == "{{$.pipeline_service_account}}"
    assert job_inputs["restart_job_on_worker_restart"]["defaultValue"] is True
    assert job_inputs["timeout"]["defaultValue"] == f"{TIMEOUT_S['train']}s"
    # The wrapped op keeps train's inputs and outputs: evaluate reads the Model artifact from the train task.
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "producerTask": "train", "outputArtifactKey": "model"}
    assert train_task["inputs"]["parameters"]["required_gpus"]["runtimeValue"]["constant"] == 1

    # The default: one replica on the smallest machine for one NVIDIA_L4, running train's own container.
    train_container = kfp_spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    [pool] = _worker_pools(spec)
    assert pool["replica_count"] == 1 and pool["machine_spec"] == {
        "machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
    assert pool["container_spec"]["image_uri"] == train_container["image"]
    assert pool["container_spec"]["command"] == train_container["command"]
    assert pool["container_spec"]["args"] == [custom_job.ESCAPED_EXECUTOR_INPUT if part == "{{$}}" else part
                                              for part in train_container["args"]]

    # kic compile --target vertex --train-replicas 3 --accelerator-type NVIDIA_TESLA_A100 --accelerator-count 2
    three = _compile(tmp_path, "vertex", ClusterOptions(target="vertex", train_replica_count=3,
                                                        accelerator_type="NVIDIA_TESLA_A100", accelerator_count=2))
    pools = _worker_pools(three)
    assert [pool["replica_count"] for pool in pools] == [1, 2]  # the chief alone, then the workers
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100",
                                        "accelerator_count": 2}
        assert custom_job.ESCAPED_EXECUTOR_INPUT in pool["container_spec"]["args"]
    assert _tasks(three)["train"]["inputs"]["parameters"]["required_gpus"]["runtimeValue"]["constant"] == 2
    # No GPU: no accelerator at all (Vertex AI refuses a type without a count).
    [cpu] = _worker_pools(_compile(tmp_path, "vertex", ClusterOptions(
        target="vertex", accelerator_count=0, train_machine_type="n1-standard-16")))
    assert cpu["machine_spec"] == {"machine_type": "n1-standard-16"}


def test_the_executor_input_placeholder_sits_only_where_vertex_documents_it(compiled):
    """The placeholder is in the wrapper's compile-time default and in no value another task produces."""
    spec = compiled["vertex"]
    for name, task in _tasks(spec).items():
        for argument in task["inputs"].get("parameters", {}).values():
            if "taskOutputParameter" in argument:
                assert "worker_pool" not in argument["taskOutputParameter"]["outputParameterKey"], name
    holders = [(component, name) for component, body in spec["components"].items()
               for name, definition in body.get("inputDefinitions", {}).get("parameters", {}).items()
               if custom_job.ESCAPED_EXECUTOR_INPUT in str(definition.get("defaultValue", ""))]
    assert holders == [("comp-train", "worker_pool_specs")]


def test_vertex_train_machines_at_run_time_are_opt_in_through_the_worker_pools_step(tmp_path, compiled):
    """The unverified variant: the run parameters reach a step that builds the worker pools at run time."""
    spec = _compile(tmp_path, "vertex", ClusterOptions(target="vertex", train_machines_at_run_time=True))
    kfp_spec = compiled["kfp"]
    tasks = _tasks(spec)
    train_task, pools_task = tasks["train"], tasks["train-worker-pools"]
    assert train_task["inputs"]["parameters"]["worker_pool_specs"] == {
        "taskOutputParameter": {"producerTask": "train-worker-pools", "outputParameterKey": "Output"}}
    assert train_task["inputs"]["parameters"]["required_gpus"]["componentInputParameter"] == "accelerator_count"
    resources, expected = _resources(spec, "train-worker-pools"), STEP_RESOURCES["train_worker_pools"]
    assert resources["resourceCpuLimit"] == expected.cpu_limit
    pools_inputs = pools_task["inputs"]["parameters"]
    assert {name: pools_inputs[name]["componentInputParameter"] for name in (
        "replica_count", "machine_type", "accelerator_type", "accelerator_count")} == {
        "replica_count": "train_replica_count", "machine_type": "train_machine_type",
        "accelerator_type": "accelerator_type", "accelerator_count": "accelerator_count"}
    pipeline_inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert pipeline_inputs["train_replica_count"]["defaultValue"] == 1
    assert pipeline_inputs["train_machine_type"]["defaultValue"] == ""
    assert pipeline_inputs["accelerator_type"]["defaultValue"] == "NVIDIA_L4"

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
    assert [pool["replica_count"] for pool in pools] == [1, 2]
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100",
                                        "accelerator_count": 2}
        # What the launcher fills with train's executor input, JSON-escaped into its payload.
        assert pool["container_spec"]["args"] == [custom_job.ESCAPED_EXECUTOR_INPUT if part == "{{$}}" else part
                                                  for part in train_container["args"]]
    [cpu] = step(container=container, replica_count=1, machine_type="n1-standard-16", accelerator_type="NVIDIA_L4",
                 accelerator_count=0)
    assert cpu["machine_spec"] == {"machine_type": "n1-standard-16"}
    with pytest.raises(ValueError, match="either compiled in or run parameters"):
        ClusterOptions(target="vertex", train_machines_at_run_time=True, accelerator_count=2)


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
        ("", "NVIDIA_L4", 3): ("accelerator_count", "1, 2, 4 or 8: how many NVIDIA_L4 one machine has"),
        ("", "NVIDIA_TESLA_T4", 8): ("accelerator_count", "1, 2 or 4: how many NVIDIA_TESLA_T4"),
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


# Vertex AI custom training's compute table: how many GPUs of each type one machine can have.
VERTEX_GPU_COUNTS = {"NVIDIA_TESLA_T4": (1, 2, 4), "NVIDIA_TESLA_P4": (1, 2, 4), "NVIDIA_TESLA_P100": (1, 2, 4),
                     "NVIDIA_TESLA_V100": (1, 2, 4, 8), "NVIDIA_L4": (1, 2, 4, 8),
                     "NVIDIA_TESLA_A100": (1, 2, 4, 8, 16), "NVIDIA_A100_80GB": (1, 2, 4, 8),
                     "NVIDIA_H100_80GB": (1, 2, 4, 8), "NVIDIA_H100_MEGA_80GB": (8,), "NVIDIA_H200_141GB": (8,),
                     "NVIDIA_B200": (8,)}


@pytest.mark.parametrize("kind", sorted(VERTEX_GPU_COUNTS))
def test_gpu_counts_are_those_a_vertex_machine_has(kind):
    """Each count Vertex AI offers gets a machine that carries it; any other fails in validate, listing them."""
    for count in range(1, 17):
        values = {"accelerator_type": kind, "accelerator_count": count, "train_machine_type": ""}
        if count in VERTEX_GPU_COUNTS[kind]:
            assert parameters.problems(values) == [], (kind, count)
            machine = vertex_machines.default_machine_type(kind, count)
            assert machine and vertex_machines.machine_gpus(machine) in (None, count), (kind, count, machine)
        else:
            [problem] = parameters.problems(values)
            allowed = VERTEX_GPU_COUNTS[kind]
            assert problem.name == "accelerator_count" and problem.expected.startswith(
                ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}" if len(allowed) > 1 else "8"), problem


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
    fed = [("prepare", "source_fingerprint", "data"), ("train", "base_model_fingerprint", "base_model"),
           ("evaluate", "baseline_fingerprint", "baseline_model"),
           # The baseline as snapshot resolved it when the run started (by default what export_uri/LATEST named).
           ("evaluate", "baseline_model_uri", "baseline_model_uri")]
    for task, input_name, output in fed:
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
            assert resources["accelerator"] == {
                "type": {"kfp": "nvidia.com/gpu", "vertex": "NVIDIA_L4"}[target], "count": "1",
                "resourceType": {"kfp": "nvidia.com/gpu", "vertex": "NVIDIA_L4"}[target], "resourceCount": "1"}, task
            assert _tasks(spec)[task]["retryPolicy"]["maxRetryCount"] == 2
        else:
            assert "accelerator" not in resources, task


def test_trials_get_trains_timeout_on_kubeflow_and_nothing_is_placed_locally(tuning):
    executors = tuning["kfp"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name: int(config["activeDeadlineSeconds"]) for name, config in executors.items()} == {
        "exec-prepare": TIMEOUT_S["prepare"], "exec-trial": TIMEOUT_S["train"], "exec-trial-2": TIMEOUT_S["train"]}
    assert all(not _resources(tuning["local"], task) for task in TUNING_STEPS)
    assert all("retryPolicy" not in task for task in _tasks(tuning["local"]).values())


def test_kic_compile_takes_trains_machines_and_refuses_what_does_not_fit(tmp_path, capsys):
    from kic import cli

    output = str(tmp_path / "vertex.yaml")
    assert cli.main(["compile", "--target", "vertex", "--output", output, "--no-components", "--train-replicas", "2",
                     "--accelerator-type", "NVIDIA_A100_80GB", "--accelerator-count", "4"]) == 0
    pools = _worker_pools(load_pipeline_yaml(output))
    assert [pool["replica_count"] for pool in pools] == [1, 1]
    assert pools[0]["machine_spec"] == {"machine_type": "a2-ultragpu-4g", "accelerator_type": "NVIDIA_A100_80GB",
                                        "accelerator_count": 4}
    capsys.readouterr()
    refused = [
        (["--target", "vertex", "--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "8"],
         "1, 2 or 4: how many NVIDIA_TESLA_T4 one machine has"),
        (["--target", "kfp", "--train-replicas", "2"], "--train-replicas=2: train's CustomJob is Vertex AI's"),
        (["--accelerator-type", "nvidia.com/gpu"], "each platform names GPUs its own way: needs --target"),
        (["--target", "vertex", "--train-machines-at-run-time", "--accelerator-count", "2"],
         "no other option of train's machines"),
        (["--target", "vertex", "--no-step-timeouts"], "step timeouts are Kubernetes settings"),
    ]
    for options, says in refused:
        assert cli.main(["compile", "--output", output, "--no-components", *options]) == 2, options
        assert says in capsys.readouterr().err, options


def test_s3_credentials_from_a_secret_and_the_endpoint_reach_every_kubeflow_step(tmp_path):
    cluster = ClusterOptions(target="kfp", s3_credentials_secret="mlpipeline-minio-artifact",
                             s3_endpoint="http://minio-service.kubeflow:9000")
    spec = _compile(tmp_path, "kfp", cluster)
    executors = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    for step in STEPS.values():
        name = f"exec-{step.replace('_', '-')}"
        secrets = executors[name]["secretAsEnv"]
        assert [(secret["secretName"], secret.get("optional")) for secret in secrets] == \
            [("mlpipeline-minio-artifact", True)], step
        assert {pair["secretKey"]: pair["envVar"] for pair in secrets[0]["keyToEnv"]} == \
            {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}, step
        environment = {variable["name"]: variable["value"] for variable in containers[name]["container"]["env"]}
        assert environment["AWS_ENDPOINT_URL_S3"] == "http://minio-service.kubeflow:9000", step


def test_s3_settings_are_checked_and_kubeflow_only():
    with pytest.raises(ValueError, match="target kfp only"):
        ClusterOptions(target="vertex", s3_credentials_secret="keys")
    with pytest.raises(ValueError, match="a URL"):
        ClusterOptions(target="kfp", s3_endpoint="minio-service.kubeflow:9000")
    with pytest.raises(ValueError, match="S3 secret keys"):
        ClusterOptions(target="kfp", s3_credentials_secret="keys", s3_secret_keys=("id", ""))
