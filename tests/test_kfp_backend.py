"""The compiled pipelines held to the Kubeflow Pipelines backend's own rules:
the driver's GPU rule of each release era (tests/kfp_driver.py) applied to
every GPU task, and what each pipeline needs of the backend's release, as
kic submit checks it against the release the backend reports."""

import os

import pytest
from kfp_driver import gpu_limits
from test_pipeline_spec import load_pipeline_yaml

from kic.orchestration import compile as kic_compile
from kic.orchestration import kfp_backend, preflight
from kic.orchestration.kubeflow import backend_check
from kic.pipelines.placement import ClusterOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One release of each era of the driver's rule, and the newest.
RELEASES = [(2, 0, 5), (2, 3, 0), (2, 4, 0), (2, 5, 0), (2, 17, 0)]
GPU_IMAGE_STEPS = ("exec-train", "exec-trial", "exec-trial-2")


def _gpu_tasks(spec) -> dict:
    executors = spec["deploymentSpec"]["executors"]
    return {name: executor["container"].get("resources", {}).get("accelerator", {})
            for name, executor in executors.items() if name in GPU_IMAGE_STEPS}


def _run_values(spec) -> dict:
    """The pipeline's defaults as its tasks' pipelinechannel inputs hold them (JSON: numbers stay numbers)."""
    return {f"pipelinechannel--{name}": definition.get("defaultValue")
            for name, definition in spec["root"]["inputDefinitions"]["parameters"].items()}


@pytest.mark.parametrize("yaml_file", [kic_compile.PIPELINE_YAML, kic_compile.TUNING_PIPELINE_YAML])
@pytest.mark.parametrize("release", RELEASES, ids=kfp_backend.format_version)
def test_every_gpu_task_of_the_committed_pipelines_gets_its_gpu_on_every_backend(yaml_file, release):
    spec = load_pipeline_yaml(os.path.join(ROOT, yaml_file))
    tasks = _gpu_tasks(spec)
    assert set(tasks) == ({"exec-train"} if yaml_file == kic_compile.PIPELINE_YAML else
                          {"exec-trial", "exec-trial-2"})
    for name, accelerator in tasks.items():
        assert gpu_limits(accelerator, _run_values(spec), release) == {"nvidia.com/gpu": "1"}, name


def test_a_gpu_count_compiled_in_reaches_the_pod_and_zero_asks_for_none(tmp_path):
    for count in (2, 0):
        path = kic_compile.compile_pipeline(str(tmp_path / f"{count}.yaml"), "kfp",
                                            ClusterOptions(target="kfp", accelerator_count=count))
        spec = load_pipeline_yaml(path)
        for release in RELEASES:
            assert gpu_limits(_gpu_tasks(spec)["exec-train"], {}, release) == (
                {"nvidia.com/gpu": "2"} if count else {}), (count, release)


def test_the_rule_catches_a_run_parameter_typed_as_a_number():
    """What the pipeline used to compile: placeholders for an integer run parameter. The driver resolves
    them by the value's string form, so the pod got no GPU on any release; a string-typed count works
    from 2.4 only."""
    placeholders = {"resourceType": "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}",
                    "resourceCount": "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"}
    as_number = {"pipelinechannel--accelerator_type": "nvidia.com/gpu", "pipelinechannel--accelerator_count": 1}
    as_text = {**as_number, "pipelinechannel--accelerator_count": "1"}
    for release in RELEASES:
        assert gpu_limits(placeholders, as_number, release) == {}
        assert gpu_limits(placeholders, as_text, release) == ({"nvidia.com/gpu": "1"} if release >= (2, 4, 0)
                                                              else {})


def test_what_each_pipeline_needs_of_the_backend(tmp_path):
    training = load_pipeline_yaml(os.path.join(ROOT, kic_compile.PIPELINE_YAML))
    assert kfp_backend.needs(training) == [kfp_backend.JOB_ID, kfp_backend.RETRY, kfp_backend.TIMEOUT]
    assert kfp_backend.minimum_version(training) == (2, 1, 0) and kfp_backend.full_version(training) == (2, 5, 0)
    tuning = load_pipeline_yaml(os.path.join(ROOT, kic_compile.TUNING_PIPELINE_YAML))
    assert kfp_backend.COLLECTED in kfp_backend.needs(tuning) and kfp_backend.minimum_version(tuning) == (2, 14, 0)
    # For Kubeflow Pipelines 2.0.x: no step timeouts; a credentials secret needs 2.4.1.
    plain = load_pipeline_yaml(kic_compile.compile_pipeline(str(tmp_path / "plain.yaml"), "kfp",
                                                            ClusterOptions(target="kfp", step_timeouts=False)))
    assert kfp_backend.minimum_version(plain) == (2, 0, 0)
    secret = load_pipeline_yaml(kic_compile.compile_pipeline(
        str(tmp_path / "secret.yaml"), "kfp", ClusterOptions(target="kfp", gcs_credentials_secret="gcs-key")))
    assert kfp_backend.minimum_version(secret) == (2, 4, 1)
    s3_secret = load_pipeline_yaml(kic_compile.compile_pipeline(
        str(tmp_path / "s3.yaml"), "kfp", ClusterOptions(target="kfp", step_timeouts=False,
                                                         s3_credentials_secret="mlpipeline-minio-artifact")))
    assert set(kfp_backend.needs(s3_secret)) == {kfp_backend.JOB_ID, kfp_backend.RETRY, kfp_backend.SECRET_VOLUME,
                                                 kfp_backend.OPTIONAL_SECRET}
    assert kfp_backend.minimum_version(s3_secret) == (2, 4, 1) and kfp_backend.full_version(s3_secret) == (2, 15, 0)
    failing, lost = kfp_backend.shortfalls(s3_secret, (2, 5, 0))
    assert failing == [] and any("CreateContainerConfigError" in line for line in lost)
    # The endpoint alone is a plain environment variable, which every 2.x backend sets.
    endpoint = load_pipeline_yaml(kic_compile.compile_pipeline(
        str(tmp_path / "endpoint.yaml"), "kfp", ClusterOptions(target="kfp", step_timeouts=False,
                                                               s3_endpoint="http://minio-service.kubeflow:9000")))
    assert kfp_backend.minimum_version(endpoint) == (2, 0, 0)


@pytest.mark.parametrize(("answer", "version"), [
    ({"commit_sha": "abc", "tag_name": "2.3.0", "multi_user": False}, (2, 3, 0)),
    ({"tag_name": "v2.16.1"}, (2, 16, 1)),
    ({"apiServerTagName": "2.5.0", "frontendTagName": "2.5.0"}, (2, 5, 0)),  # through the UI's proxy
    ({"tag_name": "unknown", "multi_user": True}, None),  # 2.4 to 2.15
    ({"tag_name": "master"}, None),
    ({"multi_user": False}, None),
])
def test_the_release_a_health_check_names(answer, version):
    assert kfp_backend.reported_version(answer) == version


def test_the_backend_check_refuses_what_fails_warns_of_what_is_lost_and_says_what_it_could_not_check():
    training = load_pipeline_yaml(os.path.join(ROOT, kic_compile.PIPELINE_YAML))
    too_old = backend_check(training, {"tag_name": "2.0.5"})
    assert too_old.status == preflight.FAILED and "step timeouts" in too_old.detail
    assert "--no-step-timeouts" in too_old.detail
    lossy = backend_check(training, {"tag_name": "2.3.0"})
    assert lossy.status == preflight.WARNING
    assert "retries of prepare and train (from 2.4.1)" in lossy.detail and "export's version folder" in lossy.detail
    assert backend_check(training, {"tag_name": "2.5.0"}).status == preflight.OK
    unknown = backend_check(training, {"tag_name": "unknown"})
    assert unknown.status == preflight.UNCHECKED
    assert "2.1.0 or later" in unknown.detail and "2.5.0 for all it uses" in unknown.detail
    tuning = load_pipeline_yaml(os.path.join(ROOT, kic_compile.TUNING_PIPELINE_YAML))
    refused = backend_check(tuning, {"tag_name": "2.5.0"})
    assert refused.status == preflight.FAILED and "dsl.Collected" in refused.detail
