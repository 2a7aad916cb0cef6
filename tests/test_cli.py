"""The kic command, in process (the whole `kic run` is in test_local_run.py)."""

import json
import subprocess
import sys

import pytest

from kic import artifacts, cli, parameters, storage
from kic.cli import local_runs
from kic.cli.output import ProgressBar
from kic.demo_data import write_demo_dataset
from kic.runtime.steps import TRAIN_OUTPUTS

# A new Python per command: what each imports is what a user's shell pays for.
LIGHT_COMMANDS = [["--help"], ["backbones"], ["run", "--list-params"], ["validate", "{hyperparameters}"]]


@pytest.mark.parametrize("command", LIGHT_COMMANDS, ids=lambda command: " ".join(command))
def test_listing_and_validating_import_neither_tensorflow_nor_kfp(command, tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"epochs": "7", "eps": "1e-6", "backbone": "efficientnet_b0"}))
    argv = [part.format(hyperparameters=path) for part in command]
    probe = "\n".join([
        "import sys",
        "from kic import cli",
        "try:",
        f"    code = cli.main({argv!r})",
        "except SystemExit as stop:",
        "    code = stop.code",
        "heavy = sorted(name for name in ('tensorflow', 'keras', 'kfp') if name in sys.modules)",
        "print('HEAVY', heavy, 'CODE', code)"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] CODE 0" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_list_params_shows_every_pipeline_parameter(capsys):
    assert cli.main(["run", "--list-params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [parameter.name for parameter in parameters.PIPELINE_PARAMETERS]
    assert lines[0].split()[:3] == ["data_source", "str", "(required)"]
    only_vertex = [line.split()[0] for line in lines if "[only in the Vertex AI pipeline]" in line]
    assert only_vertex == ["train_replica_count", "train_machine_type", "vertex_model_display_name",
                           "vertex_parent_model", "vertex_serving_image"]


def test_prepare_command_writes_a_finished_dataset(tmp_path, capsys):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=10, size=32)
    code = cli.main(["prepare", str(tmp_path / "images"), str(tmp_path / "prepared"), "--workers", "1",
                     "--image-short-side", "32"])
    assert code == 0
    info = json.loads((tmp_path / "prepared" / artifacts.DATASET_INFO).read_text())
    assert info["class_names"] == ["circle", "square", "triangle"]
    assert "prepared 3 classes" in capsys.readouterr().out


def test_prepare_command_checks_through_the_front_door_before_reading(tmp_path, capsys):
    code = cli.main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "prepared"), "--validation-fraction", "0",
                     "--test-fraction", "1.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "data_source" in err and "no such folder" in err and "test_fraction=1.5" in err
    assert not (tmp_path / "prepared").exists()


def test_train_command_takes_every_pipeline_parameter_the_train_component_takes():
    """The component's signature is the contract; `kic train` reads its list off the step's: the two must agree."""
    from kic.components.train.component import train
    from kic.runtime import steps

    component = set(train.component_spec.inputs) - set(parameters.HYPERPARAMETERS)
    pipeline_names = {"accelerator_count" if name == "required_gpus" else name for name in component}
    assert set(steps.train_parameters()) == pipeline_names & set(parameters.PARAMETERS_BY_NAME)
    assert set(parameters.HYPERPARAMETERS) <= set(train.component_spec.inputs)  # kic train takes them all


def test_train_command_refuses_every_problem_before_training(tmp_path, capsys):
    code = cli.main(["train", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--param", "epochs=0",
                     "--param", "precision=half", "--param", "gate_metric=accuracy", "--param", "oops"])
    assert code == 2
    err = capsys.readouterr().err
    for expected in ("epochs=0", "precision='half'", "gate_metric='accuracy': not a parameter of train",
                     "--param='oops': expected NAME=VALUE", "PREPARED_DIR=", "dataset_info.json"):
        assert expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_train_command_trains_on_a_prepared_folder_as_the_step_does(prepared, tiny_backbone, tmp_path, capsys,
                                                                    gcs_emulator, where):
    """Also into gs:// (a multi-machine job's shared output): checkpoints there, the rest uploaded at the end."""
    output = gcs_emulator.new_bucket() + "/run" if where == "gcs" else str(tmp_path / "out")
    hyperparameters = tmp_path / "hyperparameters.json"
    hyperparameters.write_text(json.dumps({"epochs": "1", "batch_size": "8"}))  # the reference's strings
    code = cli.main(["train", prepared, output, "--hyperparameters", str(hyperparameters),
                     "--param", f"backbone={tiny_backbone}", "--param", "pretrained_weights=none",
                     "--param", "image_size=32", "--param", "precision=float32"])
    assert code == 0
    out = capsys.readouterr().out
    for expected in ("train: strategy: one device (the default strategy)", "train: precision float32; XLA off",
                     "Epoch 1/1 - loss: ", "train: best epoch 1 by val_accuracy",
                     f"train: checkpoints in {storage.join(output, 'checkpoints')}"):
        assert expected in out, out
    assert storage.exists(storage.join(output, "model", artifacts.KERAS_MODEL))
    assert any(name.endswith("COMMITTED") for name in storage.list_files(storage.join(output, "checkpoints")))
    info = json.loads(storage.read_text(storage.join(output, "model", artifacts.MODEL_INFO)))
    assert info["backbone"] == tiny_backbone and info["hyperparameters"]["epochs"] == 1
    metrics = json.loads(storage.read_text(storage.join(output, TRAIN_OUTPUTS["metrics"])))
    assert metrics["best_epoch"] == 1 and metrics["val_accuracy"] == info["metrics"]["val_accuracy"]


@pytest.mark.slow  # a real train (about 20 s); the storage and checkpoint parts have fast tests of their own
def test_train_command_reads_prepared_data_from_s3_and_writes_there(prepared, tiny_backbone, s3_server, capsys):
    """TensorFlow cannot read s3:// TFRecords itself: kic train copies them first."""
    bucket = s3_server.new_bucket()
    storage.upload_dir(prepared, f"{bucket}/prepared")
    code = cli.main(["train", f"{bucket}/prepared/", f"{bucket}/run", "--param", "epochs=1", "--param", "batch_size=8",
                     "--param", f"backbone={tiny_backbone}", "--param", "pretrained_weights=none",
                     "--param", "image_size=32", "--param", "precision=float32"])
    assert code == 0
    assert f"train: checkpoints in {bucket}/run/checkpoints" in capsys.readouterr().out
    assert storage.exists(f"{bucket}/run/model/{artifacts.KERAS_MODEL}")
    assert any(name.endswith("COMMITTED") for name in storage.list_files(f"{bucket}/run/checkpoints"))


def test_progress_bar_redraws_one_line(capsys):
    bar = ProgressBar()
    bar("prepare: listing /data")
    bar("prepare: 5/10 images (50/s), 0 rejected")
    bar("prepare: 10/10 images (60/s), 1 rejected")
    out = capsys.readouterr().out
    assert out.startswith("prepare: listing /data\n")
    assert "\r[" + "#" * 15 + "." * 15 + "] 5/10 images" in out
    assert out.endswith("\r[" + "#" * 30 + "] 10/10 images (60/s), 1 rejected\n")


def test_validate_command_reads_the_reference_json_and_other_parameters(tmp_path, capsys):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"epochs": "7", "eps": "1e-6", "train_only_top_layer": "True", "top_k": "3"}))
    assert cli.main(["validate", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 7 and printed["epsilon"] == 1e-6 and printed["train_only_on_top_layer"] is True
    assert printed["top_k"] == 3 and printed["optimizer"] == "adam"  # defaults filled in
    path.write_text(json.dumps({"epochs": "0", "tflite": "int4", "batch_siz": 8}))
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "epochs=0" in err and "tflite='int4'" in err and "did you mean 'batch_size'" in err
    path.write_text("{not json")
    assert cli.main(["validate", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_backbones_command_lists_the_registry(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2_100_224" in out and "efficientnet_b0" in out


def test_run_refuses_bad_parameters_before_any_step_with_every_problem(tmp_path, capsys):
    code = cli.main(["run", "--output", str(tmp_path / "out"), "--param", "epochs=0", "--param", "learning_rate=2",
                     "--param", "optimizer=lbfgs", "--param", "eval_metric=auc", "--param", "backbone=resnet5O",
                     "--param", "batch_siz=8", "--param", "gate_metric=auc", "--param", "tflite=int4"])
    assert code == 2
    err = capsys.readouterr().err
    for expected in ("epochs=0", "learning_rate=2", "lbfgs", "binary_mode", "resnet5O", "did you mean 'batch_size'"):
        assert expected in err, expected
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "runs").exists()  # rejected before any step started


def test_run_refuses_a_bad_typed_value_and_a_malformed_param(tmp_path, capsys):
    code = cli.main(["run", "--output", str(tmp_path / "out"), "--param", "epochs=three", "--param", "novalue"])
    assert code == 2
    err = capsys.readouterr().err
    assert "epochs='three': expected an integer" in err and "--param='novalue': expected NAME=VALUE" in err


def test_run_validates_the_reference_hyperparameter_json(tmp_path, capsys):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"epochs": "zero", "train_only_top_layer": "True", "eps": "2"}))
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--hyperparameters", str(path)]) == 2
    err = capsys.readouterr().err
    assert "epochs='zero'" in err and "epsilon" in err


def test_run_layers_the_demo_preset_a_hyperparameter_file_and_params(tmp_path, monkeypatch):
    """What reaches the pipeline: the demo preset, under the file's values, under --param."""
    from kic.orchestration import local_run

    seen = {}

    def stop_before_running(pipeline_yaml, values, pipeline_root, **_options):
        seen.update(values)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(local_run, "run_compiled_pipeline", stop_before_running)
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"optimizer": "sgd", "learning_rate": "0.05", "eps": "1e-6"}))
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--hyperparameters", str(path),
                     "--param", "learning_rate=0.01"]) == 1
    assert (seen["epochs"] == local_runs.DEMO_PARAMETERS["epochs"]
            and seen["backbone"] == local_runs.DEMO_PARAMETERS["backbone"])
    assert (seen["optimizer"], seen["epsilon"], seen["learning_rate"]) == ("sgd", 1e-6, 0.01)
    assert seen["data_source"] == str(tmp_path / "out" / "demo-data")
    assert set(seen) == {parameter.name for parameter in parameters.for_target("local")}  # the local pipeline's


def test_run_refuses_a_parameter_of_the_vertex_pipeline_only(tmp_path, capsys):
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--param", "vertex_model_display_name=flowers"]) == 2
    err = capsys.readouterr().err
    assert "vertex_model_display_name='flowers': only the Vertex AI pipeline has this parameter, not `kic run`" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_run_validates_the_merged_set_not_the_file_alone(tmp_path, monkeypatch):
    """eval_metric=auc from the file is valid with binary_mode=True from --param."""
    from kic.orchestration import local_run

    seen = {}

    def stop_before_running(pipeline_yaml, values, pipeline_root, **_options):
        seen.update(values)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(local_run, "run_compiled_pipeline", stop_before_running)
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"eval_metric": "auc"}))
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--hyperparameters", str(path),
                     "--param", "binary_mode=True"]) == 1
    assert (seen["eval_metric"], seen["binary_mode"]) == ("auc", True)


def test_a_sagemaker_jobs_hyperparameters_run_and_validate_with_a_note(tmp_path, monkeypatch, capsys):
    from kic.orchestration import local_run

    seen = {}

    def stop_before_running(pipeline_yaml, values, pipeline_root, **_options):
        seen.update(values)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(local_run, "run_compiled_pipeline", stop_before_running)
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"epochs": "4", "sagemaker_program": "transfer_learning.py",
                                "sagemaker_submit_directory": "s3://bucket/sourcedir.tar.gz"}))
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--hyperparameters", str(path)]) == 1
    assert seen["epochs"] == 4 and not any(name.startswith("sagemaker_") for name in seen)
    err = capsys.readouterr().err
    assert "kic: note: ignored sagemaker_program, sagemaker_submit_directory" in err
    assert cli.main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["epochs"] == 4 and "note: ignored sagemaker_program" in captured.err
    path.write_text(json.dumps({"epochs": "4", "sagemaker_program": "x", "epoch": "4"}))
    assert cli.main(["validate", str(path)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_run_names_a_missing_data_folder(tmp_path, capsys):
    assert cli.main(["run", "--output", str(tmp_path / "out"), "--data", str(tmp_path / "nope")]) == 2
    assert "data_source" in (err := capsys.readouterr().err) and "no such folder" in err


def test_predict_command_checks_its_inputs_first(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "model"), str(tmp_path / "nowhere"), "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch_predict_source" in err and "top_k=0" in err


def test_the_demo_run_trains_the_registrys_cpu_backbone_with_nothing_to_download(tmp_path, monkeypatch, keras_home):
    """`kic run` alone passes every check and reaches the runner on a machine with an empty Keras cache and no
    internet (the default run downloads nothing), with the backbone the registry names for the CPU demo."""
    from kic.model import backbone_registry
    from kic.orchestration import local_run

    seen = {}

    def stop_before_running(pipeline_yaml, values, pipeline_root, **_options):
        seen.update(values)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(local_run, "run_compiled_pipeline", stop_before_running)
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # nothing answers there
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    assert cli.main(["run", "--output", str(tmp_path / "out")]) == 1, "stopped by the test, not refused"
    assert seen["backbone"] == backbone_registry.CPU_DEMO_BACKBONE
    assert list(keras_home.iterdir()) == []


def test_tune_refuses_a_bad_search_and_bad_parameters_at_once_before_anything_runs(tmp_path, capsys):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=4, size=32)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"HyperParameterTuningJobConfig": {
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
        "ParameterRanges": {
            "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0", "MaxValue": "2"}],
            "IntegerParameterRanges": [{"Name": "batch_sise", "MinValue": "8", "MaxValue": "64"}],
            "CategoricalParameterRanges": [{"Name": "eval_metric", "Values": ["accuracy", "prc"]}]}}}))
    output = tmp_path / "out"
    code = cli.main(["tune", "--data", str(tmp_path / "images"), "--output", str(output), "--search-space",
                     str(space), "--strategy", "annealing", "--param", "epochs=0", "--param", "nonsense",
                     "--param", "pretrained_weights=none"])
    assert code == 2
    err = capsys.readouterr().err
    for expected in ("search_space.learning_rate=2.0", "did you mean 'batch_size'", "search_space.eval_metric='prc'",
                     "objective_metric='val_auc'", "strategy='annealing'", "epochs=0", "--param='nonsense'"):
        assert expected in err, expected
    assert not (output / "runs").exists()
