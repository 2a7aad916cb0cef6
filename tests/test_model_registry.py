"""The Vertex AI pipeline's upload to the Vertex AI Model Registry: where it sits in the compiled spec, what
it is wired to, that Google Cloud Pipeline Components' upload request holds what export tells it, that the
other pipelines have none of it, and the clear error when the components are not installed."""

import json
import re
import sys

import pytest
from test_pipeline_spec import load_pipeline_yaml

from kic import artifacts, parameters
from kic.errors import MissingDependencyError
from kic.model.model_info import ModelInfo
from kic.orchestration import compile as kic_compile
from kic.serving import registry

REGISTRY_PARAMETERS = {"vertex_model_display_name", "vertex_parent_model", "vertex_serving_image"}
GCPC_UPLOAD_LAUNCHER = "google_cloud_pipeline_components.container.v1.model.upload_model.launcher"
PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("registry")
    return {target: load_pipeline_yaml(kic_compile.compile_pipeline(str(out / f"{target}.yaml"), target))
            for target in ("vertex", "kfp", kic_compile.LOCAL)}


def _tasks(spec) -> dict:
    """Every task of every DAG by display name: (task, its DAG's component name, the enclosing conditions)."""
    found = {}

    def walk(dag, conditions):
        component = spec["root"] if dag == "root" else spec["components"][dag]
        for task in component["dag"]["tasks"].values():
            name, child = task["taskInfo"]["name"], task["componentRef"]["name"]
            found[name] = (task, dag, conditions)
            if "dag" in spec["components"][child]:
                condition = task.get("triggerPolicy", {}).get("condition")
                walk(child, conditions + ([(name, condition)] if condition else []))

    walk("root", [])
    return found


def _producer(spec, tasks, name, input_name) -> tuple[str, str]:
    """Where a task's input comes from, followed up through the enclosing DAGs: (producer task's display name,
    output key), ("pipeline", parameter name) or ("constant", value)."""
    task, dag, _ = tasks[name]
    while True:
        inputs = task["inputs"]
        source = inputs.get("parameters", {}).get(input_name) or inputs["artifacts"][input_name]
        if "runtimeValue" in source:
            return "constant", source["runtimeValue"]["constant"]
        if "taskOutputParameter" in source or "taskOutputArtifact" in source:
            producer = source.get("taskOutputParameter") or source["taskOutputArtifact"]
            component = spec["root"] if dag == "root" else spec["components"][dag]
            producer_name = component["dag"]["tasks"][producer["producerTask"]]["taskInfo"]["name"]
            return producer_name, producer.get("outputParameterKey") or producer["outputArtifactKey"]
        input_name = source.get("componentInputParameter") or source["componentInputArtifact"]
        if dag == "root":
            return "pipeline", input_name
        # Up one level: the task that runs this DAG, and what it passes in.
        task, dag, _ = next(entry for entry in tasks.values() if entry[0]["componentRef"]["name"] == dag)


def _executor(spec, task) -> dict:
    component = spec["components"][task["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]


def test_the_upload_runs_after_export_in_the_blessed_branch_only_when_a_display_name_is_given(specs):
    spec = specs["vertex"]
    tasks = _tasks(spec)
    upload, version = tasks["upload-model"], tasks["upload-model-version"]
    assert [name for name, _ in upload[2]] == ["model-blessed", "model-registry-requested", "new-model"]
    assert [name for name, _ in version[2]] == ["model-blessed", "model-registry-requested", "new-version"]
    blessed, requested, new_model = (condition for _, condition in upload[2])
    assert f"evaluate-{artifacts.BLESSED_KEY}" in blessed and blessed.endswith("== true")
    assert requested == "inputs.parameter_values['pipelinechannel--vertex_model_display_name'] != ''"
    assert new_model == "inputs.parameter_values['pipelinechannel--vertex_parent_model'] == ''"
    assert version[2][2][1] == f"!({new_model})"  # the else branch: a parent model is named
    assert tasks["export"][2] == upload[2][:1]  # export runs whether or not a model is uploaded
    for task, _, _ in (upload, version):
        assert task["cachingOptions"] == {}  # never from the cache: each run uploads what it exported
        executor = _executor(spec, task)["container"]
        assert executor["command"][-1] == GCPC_UPLOAD_LAUNCHER
        assert executor["image"].startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:")


def test_the_upload_is_wired_to_the_exported_saved_model_its_serving_image_and_the_parameters(specs):
    spec = specs["vertex"]
    tasks = _tasks(spec)
    for upload in ("upload-model", "upload-model-version"):
        assert _producer(spec, tasks, upload, "unmanaged_container_model") == ("saved-model", "artifact")
        assert _producer(spec, tasks, upload, "display_name") == ("pipeline", "vertex_model_display_name")
        assert _producer(spec, tasks, upload, "description") == ("export", "model_description")
        assert _producer(spec, tasks, upload, "labels") == ("export", "model_labels")
        assert _producer(spec, tasks, upload, "location") == ("constant", "{{$.pipeline_google_cloud_location}}")
    assert _producer(spec, tasks, "upload-model-version", "parent_model") == ("parent-model", "artifact")

    # The SavedModel: the export's package folder 1/, as a google.UnmanagedContainerModel served by the image.
    importer = _executor(spec, tasks["saved-model"][0])["importer"]
    assert importer["typeSchema"]["schemaTitle"] == "google.UnmanagedContainerModel"
    assert importer["artifactUri"] == {"runtimeParameter": "uri"}
    assert _producer(spec, tasks, "saved-model", "uri") == ("export", "saved_model_uri")
    assert importer["metadata"] == {"containerSpec": {"imageUri": "{{$.inputs.parameters['metadata']}}"}}
    assert _producer(spec, tasks, "saved-model", "metadata") == ("pipeline", "vertex_serving_image")
    serving_image = spec["root"]["inputDefinitions"]["parameters"]["vertex_serving_image"]["defaultValue"]
    assert serving_image == registry.VERTEX_SERVING_IMAGE
    assert serving_image == "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"

    parent = _executor(spec, tasks["parent-model"][0])["importer"]
    assert parent["typeSchema"]["schemaTitle"] == "google.VertexModel"
    assert parent["metadata"] == {"resourceName": "{{$.inputs.parameters['metadata']}}"}
    assert _producer(spec, tasks, "parent-model", "metadata") == ("pipeline", "vertex_parent_model")


def test_the_kfp_and_local_pipelines_have_neither_the_upload_nor_its_parameters(specs):
    vertex_inputs = set(specs["vertex"]["root"]["inputDefinitions"]["parameters"])
    assert REGISTRY_PARAMETERS <= vertex_inputs
    for target in ("kfp", kic_compile.LOCAL):
        spec = specs[target]
        vertex_only = {parameter.name for parameter in parameters.PIPELINE_PARAMETERS
                       if parameter.targets == ("vertex",)}
        # Train's machines are compiled into the cluster pipelines, and run parameters of kic run's.
        machines = set(parameters.TRAIN_MACHINE_PARAMETERS) - vertex_only if target == kic_compile.LOCAL else set()
        assert set(spec["root"]["inputDefinitions"]["parameters"]) == (vertex_inputs - vertex_only) | machines
        assert not {"upload-model", "upload-model-version", "saved-model", "parent-model"} & set(_tasks(spec))
        executors = json.dumps(spec["deploymentSpec"])
        assert "google-cloud-pipeline-components" not in executors and "importer" not in executors


def test_gcpcs_upload_request_holds_what_export_tells_it(specs):
    """The request Google Cloud Pipeline Components' launcher builds, from the compiled executor: its payload
    is a template that splices the display name and description in as they are, so what export and the front
    door let through must keep it valid JSON. Rendered as the backend renders it, parsed as the launcher
    parses it, completed by the launcher's own function with the imported SavedModel."""
    from google_cloud_pipeline_components.container.v1.model.upload_model import remote_runner

    spec = specs["vertex"]
    tasks = _tasks(spec)
    info = ModelInfo(backbone="efficientnet_b0", image_size=224, interpolation="bilinear",
                     class_names=('say "cheese"', "back\\slash", "naïve"), binary_mode=False)
    display_name = "Flowers – l'été 2026"
    parameters.validate({"vertex_model_display_name": display_name})
    values = {"display_name": display_name, "description": registry.description(info, {"accuracy": 0.91234}),
              "labels": registry.labels(info), "location": "europe-west4", "project": "my-project"}

    executor = _executor(spec, tasks["upload-model"][0])["container"]
    template = json.loads(executor["args"][executor["args"].index("--payload") + 1])["Concat"]
    defaults = spec["components"][tasks["upload-model"][0]["componentRef"]["name"]]["inputDefinitions"]["parameters"]
    inputs = {**{name: definition.get("defaultValue") for name, definition in defaults.items()}, **values}

    def render(piece: str) -> str:
        piece = piece.replace("{{$.pipeline_job_uuid}}", "job-1")
        return PLACEHOLDER.sub(lambda match: (value if isinstance(value := inputs[match.group(1)], str)
                                              else json.dumps(value)), piece)

    model = json.loads("".join(render(piece) for piece in template), strict=False)  # as the launcher does
    assert (model["display_name"], model["description"], model["labels"]) == (
        display_name, values["description"], values["labels"])
    assert "efficientnet_b0" in model["description"] and "0.9123" in model["description"]

    saved_model = "gs://bucket/root/123/run/export_456/package/1"
    executor_input = {"inputs": {"artifacts": {"unmanaged_container_model": {"artifacts": [{
        "uri": saved_model, "metadata": {"containerSpec": {"imageUri": registry.VERTEX_SERVING_IMAGE}}}]}}}}
    model = remote_runner.append_unmanaged_model_artifact_into_payload(json.dumps(executor_input), model)
    assert model["artifact_uri"] == saved_model
    assert model["container_spec"] == {"image_uri": registry.VERTEX_SERVING_IMAGE}


def test_labels_keep_to_google_clouds_label_alphabet():
    info = ModelInfo(backbone="EfficientNet.B0 (v2)", image_size=224, interpolation="bilinear",
                     class_names=tuple(f"c{index}" for index in range(1000)), binary_mode=True)
    labels = registry.labels(info)
    assert labels["classes"] == "1000" and labels["mode"] == "binary" and labels["framework"] == "tensorflow"
    assert labels["backbone"] == "efficientnet-b0--v2-"
    for key, value in labels.items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(r"[a-z0-9_-]{0,63}", value), (key, value)


def test_the_vertex_target_without_the_extra_names_it(monkeypatch, tmp_path, capsys):
    """As if google-cloud-pipeline-components were not installed: the Vertex target cannot be built and
    `kic compile` says what to install, before it writes anything; the other targets do not need it."""
    from kic import cli
    from kic.pipelines import training_pipeline
    from kic.pipelines.placement import ClusterOptions

    monkeypatch.setitem(sys.modules, "google_cloud_pipeline_components", None)  # `import` now fails
    monkeypatch.chdir(tmp_path)
    for argv in (["compile", "--target", "vertex", "--output", "vertex.yaml", "--no-components"],
                 ["compile", "--no-components"]):  # both targets: not even pipeline.yaml is written
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "pip install kic[vertex]" in err and "Traceback" not in err
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(MissingDependencyError, match=r"pip install kic\[vertex\]"):
        training_pipeline.build(ClusterOptions(target="vertex"))
    training_pipeline.build(ClusterOptions(target="kfp"))
    assert cli.main(["compile", "--target", "kfp", "--output", "kfp.yaml", "--no-components"]) == 0
    assert (tmp_path / "kfp.yaml").exists()
