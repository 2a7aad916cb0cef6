"""The compiled pipeline and components: every parameter typed with the one
default it has (kic.parameters), every remaining literal copy in a component
signature checked against it, committed YAML files fresh, train in the GPU image and the rest in the CPU image."""

import os
import subprocess
import sys

import pytest
import yaml

import kic
from kic import artifacts, parameters
from kic.data import images
from kic.orchestration import compile as kic_compile
from kic.serving import contract
from kic.tuning import settings as tuning_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IR_TYPE = {bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING"}
FRONT_DOOR = parameters.PARAMETERS_BY_NAME
TUNING = tuning_settings.TUNING_PARAMETERS_BY_NAME
# The steps of the tuning pipeline: the training pipeline's, with trials for train.
TUNING_PIPELINE_STEPS = (*(name for name in kic_compile.TRAINING_COMPONENTS if name != "train"),
                         *kic_compile.TUNING_COMPONENTS)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    pipeline = kic_compile.compile_pipeline(str(out / "pipeline.yaml"))
    components = kic_compile.compile_components(str(out / "components"))
    return _load(pipeline), {os.path.basename(os.path.dirname(path)): _load(path) for path in components}


@pytest.fixture(scope="module")
def vertex(tmp_path_factory):
    return _load(kic_compile.compile_pipeline(str(tmp_path_factory.mktemp("vertex") / "p.yaml"), "vertex"))


@pytest.fixture(scope="module")
def tuning(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuning")
    return {target: _load(kic_compile.compile_tuning_pipeline(str(out / f"{target}.yaml"), target))
            for target in kic_compile.TARGETS}


def _load(path):
    return load_pipeline_yaml(path)


def load_pipeline_yaml(path) -> dict:
    """The pipeline spec, with the platform spec (kfp-kubernetes settings) that
    follows it as a second YAML document under "platforms", as KFP reads them."""
    with open(path, encoding="utf-8") as handle:
        documents = list(yaml.safe_load_all(handle))
    spec = documents[0]
    for extra in documents[1:]:
        spec.update(extra)
    return spec


def _inputs(spec) -> dict:
    return spec["root"]["inputDefinitions"]["parameters"]


def _assert_matches_front_door(inputs: dict, names, *, renamed=None, target="") -> None:
    """Each named input has the front door's type and default (``renamed``: component name -> pipeline name)."""
    renamed = renamed or {}
    for name in names:
        parameter = FRONT_DOOR[renamed.get(name, name)]
        spec = inputs[name]
        assert spec["parameterType"] == IR_TYPE[parameter.type], name
        if parameter.required:
            assert "defaultValue" not in spec and not spec.get("isOptional"), name
            continue
        default, expected = spec["defaultValue"], parameter.default_for(target)
        if parameter.type is int:
            default = int(default)  # the IR stores integers as JSON numbers
        assert default == expected and type(default) is parameter.type, (name, default, expected)
        assert spec.get("description"), f"{name} has no description"


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_the_pipeline_parameters_are_the_front_doors(fresh, vertex, target):
    inputs = _inputs(fresh[0] if target == "kfp" else vertex)
    # The IR sorts them; a parameter of other targets only (the Vertex AI Model Registry's) is not there.
    assert list(inputs) == sorted(parameter.name for parameter in parameters.for_target(target))
    # Train's machines are compiled in (test_placement.py), not run parameters.
    assert {name for name in FRONT_DOOR if name not in inputs} == {*parameters.TRAIN_MACHINE_PARAMETERS, *(
        () if target == "vertex" else ("vertex_model_display_name", "vertex_parent_model", "vertex_serving_image"))}
    _assert_matches_front_door(inputs, inputs, target=target)
    for name, spec in inputs.items():
        assert " ".join(spec["description"].split()) == FRONT_DOOR[name].help, name


@pytest.mark.parametrize("target", ["kfp", "vertex"])
def test_validate_takes_every_pipeline_parameter(fresh, vertex, target):
    """The component has every parameter of every target (its literal defaults are the front door's); each
    pipeline passes its own, and the others keep those defaults."""
    inputs = _inputs(fresh[1]["validate"])
    assert set(inputs) == set(FRONT_DOOR)
    _assert_matches_front_door(inputs, FRONT_DOOR)
    tasks = (fresh[0] if target == "kfp" else vertex)["root"]["dag"]["tasks"]
    passed = tasks["validate"]["inputs"]["parameters"]
    run_parameters = {parameter.name for parameter in parameters.for_target(target)}
    assert {name: spec["componentInputParameter"] for name, spec in passed.items() if name in run_parameters} == {
        name: name for name in run_parameters}
    # Train's machines, compiled in, are checked as the values they are.
    compiled_in = {name: spec["runtimeValue"]["constant"] for name, spec in passed.items()
                   if name not in run_parameters}
    assert compiled_in == {name: parameters.PARAMETERS_BY_NAME[name].default_for(target)
                           for name in parameters.TRAIN_MACHINE_PARAMETERS
                           if parameters.PARAMETERS_BY_NAME[name].belongs_to(target)}


def test_train_takes_every_hyperparameter_and_the_front_doors_defaults(fresh):
    inputs = _inputs(fresh[1]["train"])
    _assert_matches_front_door(inputs, [*parameters.HYPERPARAMETERS, "backbone", "pretrained_weights", "image_size",
                                        "base_model_uri", "seed"])
    assert inputs["required_gpus"]["defaultValue"] == 0
    passed = fresh[0]["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    for name in parameters.HYPERPARAMETERS:
        assert passed[name]["componentInputParameter"] == name


def test_the_other_components_defaults_are_the_front_doors(fresh):
    components = fresh[1]
    _assert_matches_front_door(_inputs(components["prepare"]), [
        "validation_source", "test_source", "validation_fraction", "test_fraction", "seed", "max_rejected_fraction",
        "tfds_data_dir"], renamed={"seed": "split_seed"})
    # prepare on its own has no model to size images from: it keeps the standalone default.
    assert _inputs(components["prepare"])["image_short_side"]["defaultValue"] == images.DEFAULT_SHORT_SIDE
    _assert_matches_front_door(_inputs(components["evaluate"]), [
        "gate_metric", "gate_minimum", "baseline_model_uri", "max_regression", "allow_removed_classes", "top_k"])
    _assert_matches_front_door(_inputs(components["export"]), ["destination_uri", "tflite", "top_k"],
                               renamed={"destination_uri": "export_uri"})
    predict = _inputs(components["batch_predict"])
    _assert_matches_front_door(predict, ["output_format", "top_k"], renamed={"output_format": "batch_predict_format"})
    assert predict["batch_size"]["defaultValue"] == contract.DEFAULT_PREDICTION_BATCH_SIZE


def test_the_output_keys_are_the_components_outputs(fresh):
    components = fresh[1]

    def outputs(name):
        definitions = components[name]["root"].get("outputDefinitions", {})
        return set(definitions.get("artifacts", {})) | set(definitions.get("parameters", {}))

    assert {artifacts.EXAMPLES_KEY, artifacts.DATA_REPORT_KEY} <= outputs("prepare")
    assert artifacts.MODEL_KEY in outputs("train")
    assert {artifacts.METRICS_KEY, artifacts.EVALUATION_KEY, artifacts.EVALUATION_REPORT_KEY, artifacts.BLESSING_KEY,
            artifacts.BLESSED_KEY} <= outputs("evaluate")
    assert artifacts.PACKAGE_KEY in outputs("export")
    assert artifacts.PREDICTIONS_KEY in outputs("batch_predict")


def test_validation_runs_before_any_data_is_read(fresh):
    tasks = fresh[0]["root"]["dag"]["tasks"]
    assert tasks["prepare"]["dependentTasks"] == ["snapshot", "validate"]
    assert tasks["snapshot"]["dependentTasks"] == ["validate"]
    assert "dependentTasks" not in tasks["validate"]


@pytest.mark.parametrize("target", kic_compile.TARGETS)
@pytest.mark.parametrize("compile_, yamls", [(kic_compile.compile_pipeline, kic_compile.PIPELINE_YAMLS),
                                             (kic_compile.compile_tuning_pipeline, kic_compile.TUNING_PIPELINE_YAMLS)],
                         ids=["training", "tuning"])
def test_committed_pipeline_yaml_is_fresh(tmp_path, target, compile_, yamls):
    path = compile_(str(tmp_path / "pipeline.yaml"), target)
    committed_path = os.path.join(ROOT, yamls[target])
    with open(committed_path, encoding="utf-8") as committed, open(path) as new:
        assert committed.read() == new.read(), f"{committed_path} is stale: run `kic compile`"


@pytest.mark.parametrize("name", kic_compile.COMPONENT_NAMES)
def test_committed_component_yaml_is_fresh(name, tmp_path):
    path = [path for path in kic_compile.compile_components(str(tmp_path)) if f"/{name}/" in path][0]
    committed_path = os.path.join(ROOT, "components", name, "component.yaml")
    with open(committed_path, encoding="utf-8") as committed, open(path) as new:
        assert committed.read() == new.read(), f"{committed_path} is stale: run `kic compile`"


def test_train_runs_the_gpu_image_and_every_other_step_the_cpu_image(fresh, tuning):
    gpu_steps = ("train", "trial")
    for spec, names in ((fresh[0], kic_compile.TRAINING_COMPONENTS), (tuning["kfp"], TUNING_PIPELINE_STEPS)):
        executors = spec["deploymentSpec"]["executors"]
        # The second wave's trials are a second instance of the trial component: exec-trial-2.
        images = {name.removeprefix("exec-").removesuffix("-2"): executor["container"]["image"]
                  for name, executor in executors.items()}
        assert images == {name.replace("_", "-"): f"ghcr.io/kic-project/kic-{'gpu' if name in gpu_steps else 'cpu'}:"
                                                  f"{kic.__version__}" for name in names}
    for name, component in fresh[1].items():
        [executor] = component["deploymentSpec"]["executors"].values()
        image = f"ghcr.io/kic-project/kic-{'gpu' if name in gpu_steps else 'cpu'}:{kic.__version__}"
        assert executor["container"]["image"] == image, name
    for executor in executors.values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_kic_compile_sets_the_images_of_the_pipeline_and_the_components(tmp_path):
    """The images are read when the components are imported, so this runs in a process of its own."""
    cpu, gpu = "registry.example/kic-cpu@sha256:" + "c" * 64, "registry.example/kic-gpu@sha256:" + "9" * 64
    script = (f"from kic import cli; from kic.orchestration import compile as c; "
              f"cli.main(['compile', '--target', 'kfp', '--image-cpu', {cpu!r}, '--image-gpu', {gpu!r}, '--output', "
              f"{str(tmp_path / 'pipeline.yaml')!r}, '--no-components']); c.compile_components({str(tmp_path)!r})")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True)
    compiled = [_load(tmp_path / "pipeline.yaml"), *(_load(tmp_path / name / "component.yaml")
                                                      for name in kic_compile.COMPONENT_NAMES)]
    for spec in compiled:
        for name, executor in spec["deploymentSpec"]["executors"].items():
            assert executor["container"]["image"] == (gpu if name in ("exec-train", "exec-trial") else cpu), name

    # --image: one image for every kic step (the Model Registry upload runs in Google's image, its importers
    # in none).
    subprocess.run([sys.executable, "-m", "kic.cli", "compile", "--target", "vertex", "--image",
                    "registry.example/kic:1", "--output", str(tmp_path / "one.yaml"), "--no-components"],
                   check=True, cwd=tmp_path,
                   capture_output=True)
    executors = _load(tmp_path / "one.yaml")["deploymentSpec"]["executors"]
    # Train runs in the CustomJob that its launcher (Google's image) starts: the image is in the job's worker pools.
    kic_steps = [executor for name, executor in executors.items()
                 if name.removeprefix("exec-").replace("-", "_") in kic_compile.TRAINING_COMPONENTS
                 and name != "exec-train"]
    assert len(kic_steps) == len(kic_compile.TRAINING_COMPONENTS) - 1  # the training pipeline's but train
    assert {executor["container"]["image"] for executor in kic_steps} == {"registry.example/kic:1"}
    [pool] = _load(tmp_path / "one.yaml")["components"]["comp-train"]["inputDefinitions"]["parameters"][
        "worker_pool_specs"]["defaultValue"]
    assert pool["container_spec"]["image_uri"] == "registry.example/kic:1"


def test_export_runs_only_when_the_gate_blesses_the_model(fresh):
    spec = fresh[0]
    tasks = spec["root"]["dag"]["tasks"]
    condition_task = next(task for task in tasks.values() if "triggerPolicy" in task)
    assert f"evaluate-{artifacts.BLESSED_KEY}" in condition_task["triggerPolicy"]["condition"]
    assert "export" not in tasks  # it lives inside the condition's sub-DAG
    sub_dag = spec["components"][condition_task["componentRef"]["name"]]["dag"]
    assert "export" in sub_dag["tasks"]


def test_component_descriptions_reach_the_yaml(fresh):
    spec = fresh[1]["prepare"]
    assert _inputs(spec)["source"]["description"].startswith("Training images")
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["examples"]["description"].startswith("The prepared dataset")


# ------------------------------------------------------------------ the tuning pipeline


def _tuning_tasks(spec) -> dict:
    """Every task of the pipeline, those inside loops and conditions too."""
    found = {}
    for component in [spec["root"], *spec["components"].values()]:
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


@pytest.mark.parametrize("target", kic_compile.TARGETS)
def test_the_tuning_pipeline_takes_the_training_parameters_and_the_tuning_ones(tuning, target):
    inputs = _inputs(tuning[target])
    # The trials are plain tasks: train's Vertex AI custom job settings are the training pipeline's only.
    own = [parameter.name for parameter in parameters.for_target(target)
           if parameter.name not in parameters.CUSTOM_JOB_PARAMETERS]
    assert list(inputs) == sorted({*own, *TUNING})
    _assert_matches_front_door(inputs, own, target=target)
    for name, parameter in TUNING.items():
        assert inputs[name]["parameterType"] == IR_TYPE[parameter.type], name
        assert " ".join(inputs[name]["description"].split()) == parameter.help, name
        assert ("defaultValue" in inputs[name]) != parameter.required, name
    assert inputs["trials"]["defaultValue"] == 0 and inputs["strategy"]["defaultValue"] == ""


def test_plan_trials_takes_every_hyperparameter_and_the_front_doors_defaults(fresh, tuning):
    plan = _inputs(fresh[1]["plan_trials"])
    _assert_matches_front_door(plan, [*parameters.HYPERPARAMETERS, "gate_metric", "top_k", "seed"])
    assert plan["parallelism"]["defaultValue"] == tuning_settings.DEFAULT_PARALLELISM
    for name in ("strategy", "trials", "objective_metric", "objective_direction"):
        assert plan[name]["defaultValue"] == TUNING[name].default, name
    passed = _tuning_tasks(tuning["kfp"])["plan-trials"]["inputs"]["parameters"]
    for name in (*parameters.HYPERPARAMETERS, *TUNING):
        assert passed[name]["componentInputParameter"] == name, name
    assert passed["parallelism"]["runtimeValue"]["constant"] == tuning_settings.DEFAULT_PARALLELISM


def test_the_search_is_checked_before_any_data_is_read_and_the_trials_share_the_prepared_data(tuning):
    tasks = _tuning_tasks(tuning["kfp"])
    # After snapshot (which lists, reads no image), whose fingerprint of the search space file it takes.
    assert "plan-trials" in tasks["prepare"]["dependentTasks"] and tasks["plan-trials"]["dependentTasks"] == [
        "snapshot"]
    for trial in ("trial", "trial-2"):
        assert tasks[trial]["inputs"]["artifacts"]["examples"] == {
            "componentInputArtifact": "pipelinechannel--prepare-examples"}
        assert tasks[trial]["inputs"]["parameters"]["required_gpus"] == {"runtimeValue": {"constant": 1.0}}


def test_what_can_change_in_place_reaches_the_cache_keys_of_the_steps_that_read_it(fresh, tuning):
    """The snapshot's fingerprints of the pretrained weights and the search space file, besides the data's
    and the models' (tests/test_placement.py)."""
    def fed_by_snapshot(task) -> dict:
        return {name: value["taskOutputParameter"]["outputParameterKey"]
                for name, value in task["inputs"]["parameters"].items()
                if value.get("taskOutputParameter", {}).get("producerTask") == "snapshot"}

    training = fresh[0]["root"]["dag"]["tasks"]
    assert fed_by_snapshot(training["train"]) == {"base_model_fingerprint": "base_model",
                                                  "pretrained_weights_fingerprint": "pretrained_weights"}
    assert training["snapshot"]["inputs"]["parameters"]["pretrained_weights"] == {
        "componentInputParameter": "pretrained_weights"}
    tasks = _tuning_tasks(tuning["kfp"])
    assert tasks["snapshot"]["inputs"]["parameters"]["search_space"] == {"componentInputParameter": "search_space"}
    assert fed_by_snapshot(tasks["plan-trials"]) == {"search_space_fingerprint": "search_space"}
    for trial in ("trial", "trial-2"):  # inside the waves, the snapshot's outputs arrive as the loops' inputs
        assert tasks[trial]["inputs"]["parameters"]["pretrained_weights_fingerprint"] == {
            "componentInputParameter": "pipelinechannel--snapshot-pretrained_weights"}, trial
    for task in ("plan-trials", "trial", "trial-2"):
        assert tasks[task]["cachingOptions"] == {"enableCache": True}, task


def test_trials_run_in_two_parallel_waves_and_only_the_winner_is_evaluated_and_exported(tuning):
    spec = tuning["kfp"]
    root = spec["root"]["dag"]["tasks"]
    waves = {task["taskInfo"]["name"]: task for task in root.values() if "parameterIterator" in task}
    assert set(waves) == {"first-wave", "second-wave"}
    assert waves["first-wave"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-trials-Output"
    assert waves["second-wave"]["parameterIterator"]["items"]["inputParameter"] == (
        "pipelinechannel--plan-second-wave-Output")
    for wave in waves.values():
        assert wave["iteratorPolicy"]["parallelismLimit"] == tuning_settings.DEFAULT_PARALLELISM
    # The second wave is planned from the first's results, collected.
    assert root["plan-second-wave"]["inputs"]["parameters"]["first_wave"]["taskOutputParameter"] == {
        "producerTask": "for-loop-1", "outputParameterKey": "pipelinechannel--trial-Output"}
    select = root["select-best"]["inputs"]
    assert select["artifacts"]["first_wave_models"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert select["artifacts"]["second_wave_models"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert select["parameters"]["second_wave"]["taskOutputParameter"]["producerTask"] == "for-loop-2"
    winner = {"taskOutputArtifact": {"producerTask": "select-best", "outputArtifactKey": "best_model"}}
    assert root["evaluate"]["inputs"]["artifacts"]["model"] == winner
    condition = next(task for task in root.values() if "triggerPolicy" in task)
    assert f"evaluate-{artifacts.BLESSED_KEY}" in condition["triggerPolicy"]["condition"]
    export = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]["export"]
    assert export["inputs"]["artifacts"]["model"] == {
        "componentInputArtifact": "pipelinechannel--select-best-best_model"}
    assert not {"train"} & set(_tuning_tasks(spec))


def test_kic_compile_writes_both_pipelines_and_sets_the_tuning_parallelism(tmp_path):
    from kic import cli

    assert cli.main(["compile", "--target", "vertex", "--tuning", "--parallelism", "3", "--output",
                     str(tmp_path / "tuning.yaml"), "--no-components"]) == 0
    spec = _load(tmp_path / "tuning.yaml")
    assert {task["iteratorPolicy"]["parallelismLimit"] for task in spec["root"]["dag"]["tasks"].values()
            if "iteratorPolicy" in task} == {3}
    assert _tuning_tasks(spec)["plan-trials"]["inputs"]["parameters"]["parallelism"]["runtimeValue"]["constant"] == 3
    assert spec["pipelineInfo"]["name"] == "image-classification-tuning"
