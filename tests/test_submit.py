"""kic submit and kic schedule: the real kfp.Client and the real aiplatform
client against loopback stand-ins of their APIs (tests/api_standins.py) that
record what was sent."""

import json
import os

import pytest
import yaml

from kic import cli, parameters, storage
from kic.orchestration import remote
from kic.pipeline_names import TRAINING_PIPELINE_NAME as PIPELINE_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KFP_RUNS, KFP_RECURRING_RUNS, KFP_EXPERIMENTS = ("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns",
                                                 "/apis/v2beta1/experiments")
VERTEX_JOBS, VERTEX_SCHEDULES = r"/v1/projects/[^/]+/locations/[^/]+/pipelineJobs", r"/v1/.*/schedules"
HYPERPARAMETERS = {"epochs": "4", "batch_size": "16", "eps": "1e-6"}  # the reference algorithm's JSON: strings


@pytest.fixture
def hyperparameters(tmp_path) -> str:
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps(HYPERPARAMETERS))
    return str(path)


def run_arguments(values: dict) -> dict:
    """``values`` less train's machines, which are compiled into the pipeline sent."""
    arguments, _machines = remote.split_train_machines(values)
    return arguments


def expected_parameters(target: str, **given) -> dict:
    """What the front door makes of the target's defaults, the hyperparameter file, then --param and
    --data, as a run is sent them."""
    return run_arguments(parameters.resolve(HYPERPARAMETERS, given, reachability=False, target=target))


def pipeline_spec(sent: dict) -> dict:
    """The pipeline spec in a run body (beside a platform spec when the pipeline has one)."""
    return sent.get("pipeline_spec", sent)


def root_parameters(spec: dict) -> set:
    return set(spec["root"]["inputDefinitions"]["parameters"])


# --------------------------------------------------------------------------- Kubeflow Pipelines


def test_submit_to_kubeflow_sends_the_pipeline_and_every_parameter(kfp_api, hyperparameters, capsys):
    code = cli.main(["submit", "--no-image-check",
                     "--host", kfp_api.endpoint, "--namespace", "team-a", "--experiment", "flowers",
                     "--token", "secret-token", "--service-account", "pipeline-runner", "--data", "tfds:beans",
                     "--hyperparameters", hyperparameters, "--param", "epochs=3", "--param", "tflite=int8",
                     "--pipeline-root", "minio://mlpipeline/v2/artifacts"])
    out = capsys.readouterr().out
    assert code == 0, out
    [experiment] = kfp_api.sent("POST", KFP_EXPERIMENTS)
    assert experiment.body == {"display_name": "flowers", "namespace": "team-a"}
    [run] = kfp_api.sent("POST", KFP_RUNS)
    body = run.body
    assert body["experiment_id"] == "experiment-1" and body["service_account"] == "pipeline-runner"
    assert body["display_name"].startswith(PIPELINE_NAME + " ")
    # The pipeline compiled now is the committed one (test_pipeline_spec keeps that fresh).
    with open(os.path.join(ROOT, "pipeline.yaml"), encoding="utf-8") as handle:
        assert pipeline_spec(body["pipeline_spec"]) == next(yaml.safe_load_all(handle))
    assert body["runtime_config"] == {
        "pipeline_root": "minio://mlpipeline/v2/artifacts",
        "parameters": expected_parameters("kfp", epochs="3", tflite="int8", data_source="tfds:beans")}
    assert body["runtime_config"]["parameters"]["batch_size"] == 16  # from the file, typed
    assert {request.headers["authorization"] for request in kfp_api.requests} == {"Bearer secret-token"}
    assert out.rstrip().endswith(f"{kfp_api.endpoint}/#/runs/details/run-2")


def test_schedule_on_kubeflow_is_a_recurring_run_one_at_a_time_without_catch_up(kfp_api, capsys):
    code = cli.main(["schedule", "--no-image-check",
                     "--host", kfp_api.endpoint, "--cron", "0 0 3 * * *", "--data", "tfds:beans",
                     "--param", "backbone=efficientnet_b0"])
    out = capsys.readouterr().out
    assert code == 0, out
    [experiment] = kfp_api.sent("POST", KFP_EXPERIMENTS)
    assert experiment.body["display_name"] == "Default"
    [recurring] = kfp_api.sent("POST", KFP_RECURRING_RUNS)
    body = recurring.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["display_name"] == f"{PIPELINE_NAME} (0 0 3 * * *)"
    assert body["experiment_id"] == "experiment-1"
    assert pipeline_spec(body["pipeline_spec"])["pipelineInfo"]["name"] == PIPELINE_NAME
    parameters_sent = body["runtime_config"]["parameters"]
    assert parameters_sent == run_arguments(parameters.resolve(
        {"data_source": "tfds:beans", "backbone": "efficientnet_b0"}, reachability=False, target="kfp"))
    # Train's GPU is in the pipeline the schedule runs, not a run parameter.
    accelerator = pipeline_spec(body["pipeline_spec"])["deploymentSpec"]["executors"]["exec-train"]["container"][
        "resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert root_parameters(pipeline_spec(body["pipeline_spec"])) == set(parameters_sent)
    assert out.rstrip().endswith(f"{kfp_api.endpoint}/#/recurringrun/details/recurring-2")
    assert "'0 0 3 * * *', at most one run at a time, missed runs skipped" in out


def test_bad_values_send_nothing_and_are_all_reported(kfp_api, capsys):
    code = cli.main(["schedule", "--no-image-check",
                     "--host", kfp_api.endpoint, "--cron", "0 3 * * *", "--data", "tfds:beans",
                     "--param", "epochs=0", "--param", "learning_rate=fast", "--param", "nonsense",
                     "--project", "my-project"])
    err = capsys.readouterr().err
    assert code == 2
    for expected in ("epochs=0", "learning_rate='fast'", "--param='nonsense'", "--project='my-project': only for "
                     "Vertex AI", "--cron='0 3 * * *'", "'0 0 3 * * *'"):
        assert expected in err, err
    assert kfp_api.requests == []  # not even the client's health check


def test_kubeflow_sign_in_by_token_file_and_cookies(kfp_api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token")
    assert cli.main(["submit", "--no-image-check",
                     "--host", kfp_api.endpoint, "--data", "tfds:beans", "--token-file", str(token_file),
                     "--cookies", "authservice_session=abc"]) == 0
    assert {request.headers["authorization"] for request in kfp_api.requests} == {"Bearer projected-token"}
    assert {request.headers["cookie"] for request in kfp_api.requests} == {"authservice_session=abc"}


def test_a_given_pipeline_is_sent_as_it_is_and_must_take_the_parameters(kfp_api, tmp_path, capsys):
    with open(os.path.join(ROOT, "pipeline.yaml"), encoding="utf-8") as handle:
        spec = next(yaml.safe_load_all(handle))
    assert cli.main(["submit", "--no-image-check",
                     "--host", kfp_api.endpoint, "--data", "tfds:beans", "--name", "flowers-1",
                     "--pipeline", os.path.join(ROOT, "pipeline.yaml")]) == 0
    [run] = kfp_api.sent("POST", KFP_RUNS)
    assert pipeline_spec(run.body["pipeline_spec"]) == spec and run.body["display_name"] == "flowers-1"

    del spec["root"]["inputDefinitions"]["parameters"]["top_k"]  # as if compiled by an older kic
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump(spec))
    assert cli.main(["submit", "--no-image-check",
                     "--host", kfp_api.endpoint, "--data", "tfds:beans", "--pipeline", str(stale)]) == 2
    assert "does not take top_k" in capsys.readouterr().err
    assert len(kfp_api.sent("POST", KFP_RUNS)) == 1


def test_trains_machines_set_with_param_are_compiled_into_the_pipeline_sent(kfp_api, tmp_path, capsys):
    """A run cannot change what train's pod asks for, so kic submit compiles --param's GPUs in."""
    assert cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", "tfds:beans",
                     "--param", "accelerator_count=2"]) == 0
    [run] = kfp_api.sent("POST", KFP_RUNS)
    spec = pipeline_spec(run.body["pipeline_spec"])
    accelerator = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert accelerator["count"] == "2" and accelerator["resourceCount"] == "2"
    assert "accelerator_count" not in run.body["runtime_config"]["parameters"]

    # Vertex AI's name for a GPU is no resource of a Kubernetes node: the pod would never be scheduled.
    assert cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", "tfds:beans",
                     "--param", "accelerator_type=NVIDIA_L4"]) == 2
    assert "a Kubernetes extended resource such as nvidia.com/gpu" in capsys.readouterr().err
    # A compiled pipeline given as it is has its GPUs compiled in: asking for others is refused, naming the way.
    assert cli.main(["submit", "--no-image-check",
                     "--host", kfp_api.endpoint, "--data", "tfds:beans", "--param", "accelerator_count=2",
                     "--pipeline", os.path.join(ROOT, "pipeline.yaml")]) == 2
    err = capsys.readouterr().err
    assert "compiled in, so it cannot take accelerator_count" in err and "kic compile --accelerator-count" in err
    assert len(kfp_api.sent("POST", KFP_RUNS)) == 1


def test_a_refusal_of_the_api_is_a_clear_error():
    from api_standins import RecordingAPI, kubeflow_routes

    refuse = ("POST", KFP_RUNS, lambda request, match: (400, {"error": "bad", "message": "Invalid input error: "
                                                                                          "no such service account"}))
    with RecordingAPI([refuse, *kubeflow_routes()]) as api:
        target = remote_kubeflow(api.endpoint)
        with pytest.raises(remote.RejectedError, match="refused the run .400 Bad Request: Invalid input error: no "
                                                       "such service account"):
            remote.submit(target, [{"data_source": "tfds:beans"}], warn=lambda message: None, check_images=False)


def remote_kubeflow(endpoint: str):
    from kic.orchestration.kubeflow import KubeflowTarget

    return KubeflowTarget(host=endpoint)


# --------------------------------------------------------------------------- gs:// lookups


def test_gs_uris_are_looked_up_when_this_machine_can_read_them(kfp_api, gcs_emulator, tmp_path, capsys):
    bucket = gcs_emulator.new_bucket()
    storage.write_text(f"{bucket}/images/cat/1.jpg", "not really a jpeg")
    code = cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", f"{bucket}/imagez/",
                     "--param", f"base_model_uri={bucket}/models/v1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"data_source='{bucket}/imagez/': no such folder, gs:// or s3:// prefix" in err
    assert f"base_model_uri='{bucket}/models/v1': not a kic model" in err
    assert kfp_api.requests == []

    assert cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", f"{bucket}/images/"]) == 0
    [run] = kfp_api.sent("POST", KFP_RUNS)
    assert run.body["runtime_config"]["parameters"]["data_source"] == f"{bucket}/images/"


def test_gs_uris_this_machine_cannot_read_are_left_to_the_cluster(kfp_api, flaky_gcs, capsys):
    flaky_gcs.fail_every, flaky_gcs.fail_status = 1, 403  # this machine's identity may not read the bucket
    assert cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", "gs://team-bucket/images/",
                     "--param", "baseline_model_uri=gs://team-bucket/models/live"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: gs://team-bucket cannot be read from this machine") == 1  # once per bucket
    [run] = kfp_api.sent("POST", KFP_RUNS)
    assert run.body["runtime_config"]["parameters"]["data_source"] == "gs://team-bucket/images/"


def test_without_gcs_credentials_gs_uris_are_left_to_the_cluster(kfp_api, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))  # no gcloud application default login
    storage.reset_client()
    try:
        assert cli.main(["submit", "--no-image-check", "--host", kfp_api.endpoint, "--data", "gs://team-bucket/images/",
                         "--param", "pretrained_weights=gs://team-bucket/weights/b0.weights.h5"]) == 0
    finally:
        storage.reset_client()
    err = capsys.readouterr().err
    assert err.count("warning: gs:// URIs are checked on the cluster") == 1 and "credentials" in err
    assert len(kfp_api.sent("POST", KFP_RUNS)) == 1


# --------------------------------------------------------------------------- Vertex AI


def vertex_options(api, root: str) -> list[str]:
    return ["--vertex", "--project", "kic-project", "--region", "europe-west4", "--pipeline-root", f"{root}/runs",
            "--service-account", "trainer@kic-project.iam.gserviceaccount.com", "--token", "vertex-token",
            "--api-endpoint", api.endpoint]


def vertex_parameters(sent: dict) -> dict:
    """Vertex AI parameter values are protobuf Values: every number is a double."""
    return {name: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            for name, value in sent.items()}


def test_submit_to_vertex_sends_a_pipeline_job(vertex_api, gcs_emulator, hyperparameters, capsys):
    bucket = gcs_emulator.new_bucket()
    storage.write_text(f"{bucket}/images/cat/1.jpg", "not really a jpeg")
    code = cli.main(["submit", "--no-image-check", *vertex_options(vertex_api, bucket), "--data", f"{bucket}/images",
                     "--hyperparameters", hyperparameters, "--param", "epochs=3"])
    out = capsys.readouterr().out
    assert code == 0, out
    [job] = vertex_api.sent("POST", VERTEX_JOBS)
    assert job.path == "/v1/projects/kic-project/locations/europe-west4/pipelineJobs"
    assert job.headers["authorization"] == "Bearer vertex-token"
    body = job.body
    assert body["displayName"].startswith(PIPELINE_NAME + " ")
    assert body["serviceAccount"] == "trainer@kic-project.iam.gserviceaccount.com"
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert body["runtimeConfig"]["gcsOutputDirectory"] == f"{bucket}/runs"
    expected = expected_parameters("vertex", epochs="3", data_source=f"{bucket}/images")
    assert body["runtimeConfig"]["parameterValues"] == vertex_parameters(expected)
    assert root_parameters(body["pipelineSpec"]) == set(expected)
    job_id = job.query["pipelineJobId"][0]
    assert out.rstrip().endswith(f"https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/"
                                 f"{job_id}?project=kic-project")


def test_schedule_on_vertex_is_a_pipeline_job_schedule_one_at_a_time_without_queueing(vertex_api, gcs_emulator,
                                                                                       capsys):
    bucket = gcs_emulator.new_bucket()
    cron = "TZ=Europe/Amsterdam 0 3 * * *"
    code = cli.main(["schedule", "--no-image-check",
                     *vertex_options(vertex_api, bucket), "--cron", cron, "--data", "tfds:beans",
                     "--name", "nightly flowers"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert vertex_api.sent("POST", VERTEX_JOBS) == []  # the schedule starts the runs
    [schedule] = vertex_api.sent("POST", VERTEX_SCHEDULES)
    assert schedule.path == "/v1/projects/kic-project/locations/europe-west4/schedules"
    body = schedule.body
    assert body["displayName"] == "nightly flowers" and body["cron"] == cron
    assert body["maxConcurrentRunCount"] == "1"  # int64 in JSON
    assert not body.get("allowQueueing") and not body.get("catchUp")  # a run due while one runs is skipped
    request = body["createPipelineJobRequest"]
    assert request["parent"] == "projects/kic-project/locations/europe-west4"
    job = request["pipelineJob"]
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert job["serviceAccount"] == "trainer@kic-project.iam.gserviceaccount.com"
    assert job["runtimeConfig"] == {"gcsOutputDirectory": f"{bucket}/runs", "parameterValues": vertex_parameters(
        run_arguments(parameters.resolve({"data_source": "tfds:beans"}, reachability=False, target="vertex")))}
    assert out.rstrip().endswith("https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/"
                                 "schedules/1?project=kic-project")


def test_vertex_options_and_cron_dialect_are_checked_before_sending(vertex_api, capsys):
    code = cli.main(["schedule", "--no-image-check",
                     "--vertex", "--region", "mars-north1", "--pipeline-root", "/tmp/runs",
                     "--service-account", "trainer", "--api-endpoint", vertex_api.endpoint, "--cron", "0 0 3 * * *",
                     "--namespace", "team-a", "--data", "tfds:beans"])
    err = capsys.readouterr().err
    assert code == 2
    for expected in ("--project='': required", "--region='mars-north1': not a Vertex AI region",
                     "--pipeline-root='/tmp/runs': required: a gs://BUCKET/PATH", "--service-account='trainer'",
                     "--namespace='team-a': only for Kubeflow Pipelines", "--cron='0 0 3 * * *': got 6 fields",
                     "without them: '0 3 * * *'"):
        assert expected in err, err
    assert vertex_api.requests == []


# --------------------------------------------------------------------------- checks before sending


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real registry on loopback holding one image, kic/cpu:1 (kic/gpu:1 is missing)."""
    import registry_server

    registry_server.require_tools()
    work = tmp_path_factory.mktemp("registry")
    registry_server.write_oci_image(work / "image", "1")
    with registry_server.serve_registry(work / "open") as served:
        registry_server.push(work / "image", "1", served.image("kic/cpu", "1"))
        yield served


def _pipeline_running(tmp_path, cpu: str, gpu: str, name: str = "pipeline.yaml") -> str:
    """The committed pipeline, its images swapped for ``cpu`` and ``gpu`` (as kic compile --image-* would)."""
    text = open(os.path.join(ROOT, "pipeline.yaml"), encoding="utf-8").read()
    images = {line.split("image:", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("image:")}
    [cpu_default] = [image for image in images if "kic-cpu" in image]
    [gpu_default] = [image for image in images if "kic-gpu" in image]
    path = tmp_path / name
    path.write_text(text.replace(cpu_default, cpu).replace(gpu_default, gpu))
    return str(path)


def test_an_image_that_cannot_be_pulled_sends_nothing_and_says_how_to_build_it(kfp_api, registry, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    cpu, gpu = registry.image("kic/cpu", "1"), registry.image("kic/gpu", "1")
    pipeline = _pipeline_running(tmp_path, cpu, gpu)
    assert cli.main(["submit", "--host", kfp_api.endpoint, "--data", "tfds:beans", "--pipeline", pipeline]) == 1
    err = capsys.readouterr().err
    assert f"image {gpu}: not found" in err and "images/build.sh REGISTRY" in err and "--no-image-check" in err
    assert cpu not in err  # it is there
    assert kfp_api.sent("POST", KFP_RUNS) == []

    pushed = _pipeline_running(tmp_path, cpu, cpu, "one-image.yaml")
    assert cli.main(["submit", "--host", kfp_api.endpoint, "--data", "tfds:beans", "--pipeline", pushed]) == 0
    assert len(kfp_api.sent("POST", KFP_RUNS)) == 1


def test_a_backend_too_old_for_the_pipeline_is_refused_and_an_unknown_one_is_said(tmp_path, capsys):
    from api_standins import RecordingAPI, kubeflow_routes

    with RecordingAPI(kubeflow_routes(tag_name="2.0.5")) as api:
        assert cli.main(["submit", "--no-image-check", "--host", api.endpoint, "--data", "tfds:beans"]) == 1
        err = capsys.readouterr().err
        assert "Kubeflow Pipelines backend release: 2.0.5 is too old: step timeouts" in err
        assert "--no-step-timeouts" in err and api.sent("POST", KFP_RUNS) == []
    with RecordingAPI(kubeflow_routes(tag_name="unknown")) as api:
        assert cli.main(["submit", "--no-image-check", "--host", api.endpoint, "--data", "tfds:beans"]) == 0
        err = capsys.readouterr().err
        assert "does not say which release it is" in err and "2.1.0 or later" in err
        assert len(api.sent("POST", KFP_RUNS)) == 1


def test_dry_run_prints_each_check_and_sends_nothing(kfp_api, registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    cpu = registry.image("kic/cpu", "1")
    ready = _pipeline_running(tmp_path, cpu, cpu)
    assert cli.main(["submit", "--dry-run", "--host", kfp_api.endpoint, "--data", "tfds:beans",
                     "--pipeline", ready]) == 0
    out = capsys.readouterr().out
    assert "[ok] parameters" in out and f"[ok] Kubeflow Pipelines at {kfp_api.endpoint}: answers" in out
    assert "[ok] Kubeflow Pipelines backend release: 2.5.0 has everything the pipeline uses" in out
    assert f"[ok] image {cpu}: present (sha256:" in out and "nothing was sent" in out
    missing = _pipeline_running(tmp_path, cpu, registry.image("kic/gpu", "1"), "missing.yaml")
    assert cli.main(["schedule", "--dry-run", "--host", kfp_api.endpoint, "--cron", "0 0 3 * * *",
                     "--data", "tfds:beans", "--pipeline", missing]) == 1
    out = capsys.readouterr().out
    assert f"[failed] image {registry.image('kic/gpu', '1')}: not found" in out and "1 of 5 checks failed" in out
    assert kfp_api.sent("POST", KFP_RUNS) == [] and kfp_api.sent("POST", KFP_RECURRING_RUNS) == []


def test_dry_run_on_vertex_checks_the_api_and_the_bucket_and_names_what_it_cannot(vertex_api, gcs_emulator,
                                                                                  capsys):
    bucket = gcs_emulator.new_bucket()
    assert cli.main(["submit", "--dry-run", "--no-image-check", *vertex_options(vertex_api, bucket),
                     "--data", "tfds:beans", "--param", "accelerator_count=2"]) == 0
    out = capsys.readouterr().out
    assert "[ok] Vertex AI (kic-project, europe-west4): answers" in out
    assert f"[ok] pipeline root bucket {bucket}: exists" in out
    assert ("[not checked] service account trainer@kic-project.iam.gserviceaccount.com: needs "
            "roles/aiplatform.user") in out
    assert "[not checked] GPU quota custom_model_training_nvidia_l4_gpus" in out
    assert "[not checked] images: left out (--no-image-check)" in out
    assert vertex_api.sent("POST", VERTEX_JOBS) == []
    [listed] = vertex_api.sent("GET", VERTEX_JOBS)
    assert listed.headers["authorization"] == "Bearer vertex-token"

    missing = "gs://no-such-bucket-kic"
    assert cli.main(["submit", "--dry-run", "--no-image-check", *vertex_options(vertex_api, missing),
                     "--data", "tfds:beans"]) == 1
    assert f"[failed] pipeline root bucket {missing}: no such bucket" in capsys.readouterr().out
