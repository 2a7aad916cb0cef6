"""The compiled pipeline and components: every hyperparameter typed with the
contract's default, committed YAML files fresh, one versioned image."""

import dataclasses
import os

import pytest
import yaml

import kic
from kic import compile as kic_compile
from kic.config import TrainingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IR_TYPE = {"bool": "BOOLEAN", "int": "NUMBER_INTEGER", "float": "NUMBER_DOUBLE", "str": "STRING"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    pipeline = kic_compile.compile_pipeline(str(out / "pipeline.yaml"))
    components = kic_compile.compile_components(str(out / "components"))
    return pipeline, {os.path.basename(os.path.dirname(path)): path for path in components}


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _assert_hyperparameters(parameters):
    for field in dataclasses.fields(TrainingConfig):
        assert field.name in parameters, field.name
        spec = parameters[field.name]
        assert spec["parameterType"] == IR_TYPE[field.type], field.name
        default = spec["defaultValue"]
        expected = field.default
        if field.type == "int":
            default = int(default)  # the IR stores integers as JSON numbers
        assert default == expected and type(default) is type(expected), (field.name, default, expected)
        assert spec.get("description"), f"{field.name} has no description"


def test_every_hyperparameter_is_a_typed_pipeline_parameter_with_the_contract_default(fresh):
    spec = _load(fresh[0])
    _assert_hyperparameters(spec["root"]["inputDefinitions"]["parameters"])


@pytest.mark.parametrize("component", ["validate", "train"])
def test_every_hyperparameter_is_a_typed_input_of_validate_and_train(fresh, component):
    spec = _load(fresh[1][component])
    _assert_hyperparameters(spec["root"]["inputDefinitions"]["parameters"])


@pytest.mark.parametrize("task", ["validate", "train"])
def test_pipeline_passes_each_hyperparameter_on(fresh, task):
    spec = _load(fresh[0])
    inputs = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    for name in TrainingConfig.field_names():
        assert inputs[name]["componentInputParameter"] == name


def test_validation_runs_before_any_data_is_read(fresh):
    tasks = _load(fresh[0])["root"]["dag"]["tasks"]
    assert tasks["prepare"]["dependentTasks"] == ["validate"]
    assert "dependentTasks" not in tasks["validate"]


def test_committed_pipeline_yaml_is_fresh(fresh):
    with open(os.path.join(ROOT, "pipeline.yaml"), encoding="utf-8") as committed, open(fresh[0]) as new:
        assert committed.read() == new.read(), "pipeline.yaml is stale: run `kic compile`"


@pytest.mark.parametrize("name", kic_compile.COMPONENT_NAMES)
def test_committed_component_yaml_is_fresh(fresh, name):
    committed_path = os.path.join(ROOT, "components", name, "component.yaml")
    with open(committed_path, encoding="utf-8") as committed, open(fresh[1][name]) as new:
        assert committed.read() == new.read(), f"{committed_path} is stale: run `kic compile`"


def test_every_step_runs_the_versioned_image_without_installing_kfp(fresh):
    spec = _load(fresh[0])
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(kic_compile.COMPONENT_NAMES)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"].endswith(f":{kic.__version__}")
        assert "pip install" not in " ".join(container["command"])


def test_export_runs_only_when_the_gate_blesses_the_model(fresh):
    spec = _load(fresh[0])
    tasks = spec["root"]["dag"]["tasks"]
    condition_task = next(task for task in tasks.values() if "triggerPolicy" in task)
    assert "evaluate-Output" in condition_task["triggerPolicy"]["condition"]
    assert "export" not in tasks  # it lives inside the condition's sub-DAG
    sub_dag = spec["components"][condition_task["componentRef"]["name"]]["dag"]
    assert "export" in sub_dag["tasks"]


def test_component_descriptions_reach_the_yaml(fresh):
    spec = _load(fresh[1]["prepare"])
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["source"]["description"].startswith("Training images")
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["examples"]["description"].startswith("The prepared dataset")
