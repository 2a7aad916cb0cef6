"""The containers' entry path, without a container engine: the wheel built from what the images' build
stage copies, installed into a fresh virtualenv outside the source tree, runs each component's exact
command from its compiled component.yaml (``sh -ec ... python3 -m kfp.dsl.executor_main ...``) on an
executor input crafted as a KFP backend sends it, and the executor output says what the step promises.

To spare a second TensorFlow install, the fresh virtualenv sees this one's packages through a .pth
line (its own site-packages comes first, and .pth files of a directory added that way are not run,
so this one's editable kic is invisible there); the tests check that the kic they run is the wheel's.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml

from kic import artifacts
from kic.demo_data import write_demo_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "images", "cpu.Dockerfile")


def _build_stage_copies() -> list[tuple[str, str]]:
    """(source, destination) of each COPY of the images' build stage, relative to the context and WORKDIR."""
    with open(DOCKERFILE, encoding="utf-8") as handle:
        build_stage = handle.read().split("\nFROM ")[1]
    copies = []
    for line in build_stage.splitlines():
        if line.startswith("COPY "):
            *sources, destination = line.split()[1:]
            copies += [(source, os.path.join(destination, source) if destination.endswith("/") else destination)
                       for source in sources]
    return copies


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """A fresh virtualenv with the kic wheel installed; yields the environment the IR commands run in."""
    root = tmp_path_factory.mktemp("container")
    context = root / "src"
    for source, destination in _build_stage_copies():  # what `docker build` copies, nothing else
        target = context / destination
        if os.path.isdir(os.path.join(ROOT, source)):
            shutil.copytree(os.path.join(ROOT, source), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, source), target)
    pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "wheels"),
                    str(context)], check=True, cwd=root)
    [wheel] = glob.glob(str(root / "wheels" / "kic-*.whl"))

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python3")
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site_packages, "project_dependencies.pth"), "w", encoding="utf-8") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True, cwd=root)

    home, workdir = root / "home", root / "work"
    home.mkdir()
    workdir.mkdir()
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "VIRTUAL_ENV"))}
    environment.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    where = subprocess.run(["python3", "-c", "import kic.components.validate.component as c, kic; print(kic.__file__)"],
                           check=True, capture_output=True, text=True, cwd=workdir, env=environment).stdout.strip()
    assert where == os.path.join(site_packages, "kic", "__init__.py"), f"the container would import {where}"
    return {"env": environment, "cwd": workdir, "root": root}


def _run_ir_command(container, name: str, overrides: dict, task: str = "",
                    pipeline: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    """Runs component ``name``'s command as its component.yaml gives it (or, given ``pipeline``, as that
    pipeline's YAML gives it), on the executor input a KFP backend would send (every input parameter,
    defaults filled in); returns the process and that input."""
    with open(os.path.join(ROOT, pipeline or os.path.join("components", name, "component.yaml")),
              encoding="utf-8") as handle:
        spec = yaml.safe_load(handle)
    if pipeline:
        component = spec["components"][f"comp-{name.replace('_', '-')}"]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
    else:
        [executor] = spec["deploymentSpec"]["executors"].values()
        component = spec["root"]
    task_root = container["root"] / "tasks" / (task or name)
    task_root.mkdir(parents=True)
    inputs, outputs = component["inputDefinitions"], component.get("outputDefinitions", {})
    values = {}
    for parameter, definition in inputs.get("parameters", {}).items():
        value = overrides.get(parameter, definition.get("defaultValue"))
        assert value is not None, f"{name}: no value for required {parameter}"
        values[parameter] = int(value) if definition["parameterType"] == "NUMBER_INTEGER" else value
    executor_input = {
        "inputs": {"parameterValues": values},
        "outputs": {
            "parameters": {output: {"outputFile": str(task_root / output)} for output in outputs.get("parameters", {})},
            "artifacts": {output: {"artifacts": [{"name": output, "type": definition["artifactType"],
                                                  "uri": str(task_root / output), "metadata": {}}]}
                          for output, definition in outputs.get("artifacts", {}).items()},
            "outputFile": str(task_root / "executor_output.json"),
        },
    }
    container_spec = executor["container"]
    arguments = [json.dumps(executor_input) if argument == "{{$}}" else argument for argument in container_spec["args"]]
    completed = subprocess.run([*container_spec["command"], *arguments], cwd=container["cwd"], env=container["env"],
                               capture_output=True, text=True, timeout=300)
    return completed, executor_input


def _executor_output(completed: subprocess.CompletedProcess, executor_input: dict) -> dict:
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(executor_input["outputs"]["outputFile"], encoding="utf-8") as handle:
        return json.load(handle)


def _output_uri(executor_input: dict, name: str) -> str:
    return executor_input["outputs"]["artifacts"][name]["artifacts"][0]["uri"]


def test_validate_runs_from_the_installed_wheel(container, tmp_path):
    from kic import parameters

    write_demo_dataset(str(tmp_path / "images"), images_per_class=2, size=24)
    output = _executor_output(*_run_ir_command(container, "validate", {
        "data_source": str(tmp_path / "images"), "pretrained_weights": "none", "backbone": "mobilenet_v2_035_96"}))
    # The short side prepare should store, derived from the backbone's 96 px.
    expected = parameters.derive_short_side(backbone="mobilenet_v2_035_96", image_size=0, requested=0)
    assert output["parameterValues"] == {"Output": expected}

    # Bad values: the step fails with one message listing each problem, not a traceback.
    completed, _ = _run_ir_command(container, "validate", {
        "data_source": str(tmp_path / "missing"), "pretrained_weights": "none", "epochs": 0}, task="validate-bad")
    assert completed.returncode == 1
    log = completed.stdout + completed.stderr
    assert "validate failed: ParameterError" in log and "epochs=0" in log and "data_source=" in log
    assert "Traceback" not in log


def test_prepare_runs_from_the_installed_wheel(container, tmp_path):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=6, size=32)
    completed, executor_input = _run_ir_command(container, "prepare", {
        "source": str(tmp_path / "images"), "validation_fraction": 0.34, "test_fraction": 0.0, "image_short_side": 32})
    produced = _executor_output(completed, executor_input)["artifacts"]
    classes = sorted(os.listdir(tmp_path / "images"))
    examples = produced[artifacts.EXAMPLES_KEY]["artifacts"][0]["metadata"]
    assert examples["class_names"] == classes
    assert (examples["num_train"], examples["num_validation"]) == (4 * len(classes), 2 * len(classes))
    data_metrics = produced["data_metrics"]["artifacts"][0]["metadata"]
    assert (data_metrics["num_listed"], data_metrics["num_rejected"]) == (6 * len(classes), 0)

    examples_dir = _output_uri(executor_input, artifacts.EXAMPLES_KEY)
    with open(os.path.join(examples_dir, artifacts.LABEL_MAP), encoding="utf-8") as handle:
        assert sorted(json.load(handle)) == classes
    assert os.path.exists(os.path.join(examples_dir, artifacts.DATASET_INFO))
    assert glob.glob(os.path.join(examples_dir, "train-*.tfrecord")) and glob.glob(
        os.path.join(examples_dir, "validation-*.tfrecord"))
    with open(_output_uri(executor_input, artifacts.DATA_REPORT_KEY), encoding="utf-8") as handle:
        assert "<html" in handle.read().lower()


def test_vertex_trains_worker_pools_step_runs_from_the_installed_wheel(container):
    """The train-worker-pools step of a Vertex AI pipeline compiled with train's machines at run time (no
    component.yaml of its own), as that pipeline gives it: the job's worker pools, the chief alone in the first."""
    from kic.orchestration import compile as kic_compile
    from kic.pipelines.placement import ClusterOptions

    pipeline = kic_compile.compile_pipeline(str(container["root"] / "vertex-run-time.yaml"), "vertex",
                                            ClusterOptions(target="vertex", train_machines_at_run_time=True))
    train_container = {"image_uri": "registry.example/kic-gpu:1", "command": ["sh", "-ec", "..."],
                       "args": ["--executor_input", "<kic:executor-input>", "--function_to_execute", "train"]}
    output = _executor_output(*_run_ir_command(container, "train_worker_pools", {
        "container": train_container, "replica_count": 2, "machine_type": "", "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1}, pipeline=pipeline))
    chief, workers = output["parameterValues"]["Output"]
    assert (chief["replica_count"], workers["replica_count"]) == (1, 1)
    assert chief["machine_spec"] == {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                                     "accelerator_count": 1}
    assert chief["container_spec"]["args"][1] == workers["container_spec"]["args"][1] == "{{$.json_escape[1]}}"
