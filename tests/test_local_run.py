"""`kic run`: the compiled pipeline through the KFP local runner.

The slow tests run the README's main command on the built-in data, exactly as
a new user runs it. The fast ones check how a run's outputs are gathered, on the
folders KFP's local runner writes for a pipeline of stand-in steps.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from kic import artifacts
from kic.orchestration import local_run
from kic.pipeline_names import EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK, PREPARE_TASK

KIC = [sys.executable, "-m", "kic.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("kic-run") / "out"
    started = time.perf_counter()
    # As a new user's shell has it: without the TensorFlow log level the tests set (conftest.py).
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([*KIC, "run", "--output", str(output)], cwd=str(output.parent), capture_output=True,
                            text=True, timeout=1500, env=environment)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return output, result.stdout + result.stderr, time.perf_counter() - started


@pytest.mark.slow
def test_default_run_writes_every_output(default_run):
    output, log, _ = default_run
    for name in ("model.tar.gz", "metrics.json", "data_report.json", "data_report.md", "data_report.html",
                 "evaluation_report.html", "evaluation.json", "blessing.json", "pipeline.yaml"):
        assert (output / name).is_file(), name
    with tarfile.open(output / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"1/saved_model.pb", "class_label_to_prediction_index.json", "model_info.json", "model.keras"} <= names
    assert (output / "model" / "1" / "saved_model.pb").is_file()
    label_map = json.loads((output / "model" / "class_label_to_prediction_index.json").read_text())
    assert label_map == {"circle": 0, "square": 1, "triangle": 2}
    report = json.loads((output / "data_report.json").read_text())
    assert report["metrics"]["num_classes"] == 3
    parity = json.loads((output / artifacts.SERVING_PARITY_REPORT).read_text())
    assert parity["split"] == "test" and parity["num_files"] == parity["num_records"] > 0


@pytest.mark.slow
def test_default_run_really_learned(default_run):
    """Its metrics are those of its confusion matrix over every test image the data report counts, recomputed
    here with scikit-learn; and they are high."""
    from sklearn import metrics as reference

    output, log, _ = default_run
    metrics = json.loads((output / "metrics.json").read_text())
    evaluation = json.loads((output / artifacts.EVALUATION_JSON).read_text())
    per_class = json.loads((output / artifacts.DATA_REPORT_JSON).read_text())["counts"]["per_class"]
    confusion = np.array(evaluation["confusion_matrix"])
    assert confusion.sum(axis=1).tolist() == [per_class[name]["test"] for name in evaluation["class_names"]]
    truth, predicted = zip(*[(true, guess) for true, row in enumerate(confusion) for guess, count in enumerate(row)
                             for _ in range(count)], strict=True)
    expected = {"accuracy": reference.accuracy_score(truth, predicted), "num_examples": confusion.sum()}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = reference.precision_recall_fscore_support(truth, predicted, average=average,
                                                                             zero_division=0)
        expected |= {f"{average}_precision": precision, f"{average}_recall": recall, f"{average}_f1": f1}
    assert {name: metrics[name] for name in expected} == pytest.approx(expected)
    assert metrics["accuracy"] >= 0.9, metrics


@pytest.mark.slow
def test_default_run_shows_progress_and_a_summary(default_run):
    """Step starts and ends, the epoch lines in the reference's order with the time left, the
    summary; not the executors' input, KFP's listings or TensorFlow's startup: those (bar the
    startup noise, which the steps drop) are in the step's log file."""
    output, log, _ = default_run
    assert "validate: started" in log and re.search(r"train: finished in \d", log)
    assert re.search(r"Epoch 1/12 - loss: [0-9.]+ - accuracy: [0-9.]+ - val_loss: [0-9.]+ - val_accuracy: [0-9.]+ - "
                     r".* - ETA \d+:\d\d", log)
    assert "train: devices: 0 GPU(s)" in log
    assert "kic run finished" in log and "model.tar.gz" in log and str(output / "logs") in log
    for noise in ("executor_input", "Streamed logs", "cuInit", "absl::InitializeLog", "Could not find cuda drivers",
                  "use_unbounded_threadpool", "oneDNN"):
        assert noise not in log, noise
    assert len(log.splitlines()) < 80
    for step in ("validate", "snapshot", "prepare", "train", "evaluate", "export"):
        assert (output / "logs" / f"{step}.log").is_file(), step
    train_log = (output / "logs" / "train.log").read_text()
    assert "Got executor_input" in train_log and "train: devices:" in train_log and "Epoch 12/12" in train_log
    assert "cuInit" not in train_log and "absl::InitializeLog" not in train_log
    # served originals vs evaluated records, measured at export
    assert "export: serving parity on" in (output / "logs" / "export.log").read_text()


def test_a_failed_step_is_named_with_its_log_and_last_lines(tmp_path):
    """prepare refuses classes too small to split: the run stops there and says where to look."""
    from kic.demo_data import write_demo_dataset

    data = tmp_path / "images"
    write_demo_dataset(str(data), images_per_class=2, size=32)
    result = subprocess.run([*KIC, "run", "--data", str(data), "--output", str(tmp_path / "out"), *QUICK],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    log = tmp_path / "out" / "logs" / f"{PREPARE_TASK}.log"
    assert f"the pipeline failed in step {PREPARE_TASK}; its log is {log}" in result.stderr
    assert "prepare failed: " in result.stderr.split("Its last lines:")[1]  # the step's own words, repeated
    assert "prepare failed: " in log.read_text() and "executor_input" not in result.stdout
    assert "validate: finished in" in result.stdout and f"{PREPARE_TASK}: FAILED after" in result.stdout


@pytest.mark.slow
def test_exported_model_serves_raw_image_bytes(default_run):
    import tensorflow as tf

    output, _, _ = default_run
    serving = tf.saved_model.load(str(output / "model" / "1")).signatures["serving_default"]
    images = sorted((output / "demo-data" / "triangle").iterdir())[:4]
    predictions = serving(tf.constant([path.read_bytes() for path in images]))
    probabilities = predictions["probabilities"].numpy()
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [label.decode() for label in predictions["predicted_label"].numpy()].count("triangle") >= 3


# --------------------------------------------------------------------------- gathering the outputs
# On real run folders: the stand-in pipeline run through kfp.local (tests/kfp_local_runs.py).


def _tasks(spec: dict) -> dict[str, set[str]]:
    """Every task of a compiled pipeline, inside conditions too: its name -> its outputs' names."""
    found = {}

    def walk(dag: dict):
        for name, task in dag.get("tasks", {}).items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # a condition: its tasks are the steps
                walk(component["dag"])
            else:
                definitions = component.get("outputDefinitions", {})
                found[name] = set(definitions.get("artifacts", {})) | set(definitions.get("parameters", {}))

    walk(spec["root"]["dag"])
    return found


def _spec(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return next(yaml.safe_load_all(handle))  # the pipeline; a platform spec may follow


def test_the_stand_in_pipeline_mirrors_the_real_one(local_runs):
    """Its tasks and their outputs have the real pipeline's names, and it returns what the real one returns:
    what the tests below learn about where kfp.local puts them holds for the real pipeline."""
    real, stand_in = _spec(os.path.join(ROOT, "pipeline.yaml")), _spec(local_runs.pipeline_yaml)
    real_tasks = _tasks(real)
    for task, outputs in _tasks(stand_in).items():
        assert task in real_tasks and outputs <= real_tasks[task], (task, outputs, real_tasks.get(task))
    assert {PREPARE_TASK, EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK} <= set(_tasks(stand_in))
    assert stand_in["root"]["outputDefinitions"] == real["root"]["outputDefinitions"]


def test_each_run_is_told_by_its_own_folder_with_a_folder_per_step_that_ran(local_runs):
    fresh, cached, unblessed = local_runs.fresh, local_runs.cached, local_runs.unblessed
    assert len({fresh.run_dir, cached.run_dir, unblessed.run_dir}) == 3
    assert len({os.path.dirname(run.run_dir) for run in (fresh, cached, unblessed)}) == 1  # one pipeline root
    assert sorted(os.listdir(fresh.run_dir)) == sorted([PREPARE_TASK, EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK])
    assert sorted(os.listdir(cached.run_dir)) == sorted([EXPORT_TASK, PREDICT_TASK])  # the rest from the cache
    assert os.listdir(unblessed.run_dir) == [EVALUATE_TASK]  # prepare from the cache; no export
    # a cached step's outputs are where it ran: an earlier run's folder
    assert cached.outputs["examples"].startswith(fresh.run_dir + os.sep)
    assert cached.outputs["metrics"].startswith(fresh.run_dir + os.sep)
    assert unblessed.outputs["metrics"].startswith(unblessed.run_dir + os.sep)


def _label_map(output) -> dict:
    return json.loads((output / "model" / artifacts.LABEL_MAP).read_text())


def test_collect_outputs_gathers_what_a_user_wants_from_wherever_the_outputs_are(local_runs, tmp_path):
    output = tmp_path / "out"
    outputs = local_run.collect_outputs(local_runs.cached, str(output))
    assert outputs.metrics == {"accuracy": 0.75} and outputs.blessing["blessed"] is True
    assert json.loads((output / "metrics.json").read_text()) == {"accuracy": 0.75}
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        assert (output / name).read_text() == f"report {name}", name  # from the earlier run's prepare
    assert json.loads((output / artifacts.EVALUATION_JSON).read_text()) == {"scalars": {"accuracy": 0.75}}
    assert json.loads((output / artifacts.BLESSING_JSON).read_text()) == {"blessed": True}
    assert (output / "evaluation_report.html").read_text() == "<html>evaluation</html>"
    assert json.loads((output / artifacts.SERVING_PARITY_REPORT).read_text()) == {"num_files": 0}
    # the model this run exported, not the cached run's
    assert outputs.model == str(output / "model")
    assert _label_map(output) == {os.path.basename(local_runs.cached.run_dir): 0}
    with tarfile.open(output / "model.tar.gz") as tar:
        assert tar.getnames() == [artifacts.LABEL_MAP]
    assert outputs.predictions == str(output / "predictions.jsonl")
    assert json.loads((output / "predictions.jsonl").read_text()) == {
        "file": "x.jpg", "run": os.path.basename(local_runs.cached.run_dir)}


def test_collect_outputs_leaves_no_stale_model_from_an_earlier_run(local_runs, tmp_path):
    output = tmp_path / "out"
    local_run.collect_outputs(local_runs.fresh, str(output))
    assert _label_map(output) == {os.path.basename(local_runs.fresh.run_dir): 0}  # the premise: it had one
    outputs = local_run.collect_outputs(local_runs.unblessed, str(output))
    assert outputs.model is None and outputs.predictions is None and outputs.blessing["blessed"] is False
    assert not (output / "model").exists() and not (output / "model.tar.gz").exists()
    assert not (output / "predictions.jsonl").exists() and not (output / artifacts.SERVING_PARITY_REPORT).exists()

# --------------------------------------------------------------------------- caching, as on a cluster

QUICK_BACKBONE, QUICK_IMAGE_SIZE = "mobilenet_v3_small_100_224", 32
QUICK = ["--param", f"backbone={QUICK_BACKBONE}", "--param", "pretrained_weights=none",
         "--param", f"image_size={QUICK_IMAGE_SIZE}", "--param", "epochs=1", "--param", "batch_size=8"]


def _cached_run(data, output, *params: str) -> tuple[str, set[str]]:
    before = set(os.listdir(output / "runs")) if (output / "runs").exists() else set()
    result = subprocess.run([*KIC, "run", "--cache", "--data", str(data), "--output", str(output), *QUICK, *params],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = set(os.listdir(output / "runs")) - before - {local_run.CACHE_DIR}
    return result.stdout, set(os.listdir(output / "runs" / run))  # the steps that ran, not from the cache


@pytest.mark.slow
def test_a_cached_rerun_reuses_unchanged_data_and_notices_new_images(tmp_path):
    from kic.demo_data import write_demo_dataset

    data, output = tmp_path / "images", tmp_path / "out"
    write_demo_dataset(str(data), images_per_class=12, size=40)
    _, first = _cached_run(data, output)
    assert {PREPARE_TASK, "train", EVALUATE_TASK, EXPORT_TASK} <= first
    first_report = json.loads((output / "data_report.json").read_text())

    shown, unchanged = _cached_run(data, output)
    assert unchanged == {"snapshot", EXPORT_TASK}  # every other step from the cache; each run exports its version
    assert f"{PREPARE_TASK}: reused an earlier run's outputs (cache)" in shown and "train: started" not in shown
    assert (output / "model.tar.gz").is_file() and json.loads((output / "data_report.json").read_text()) == \
        first_report

    (data / "circle" / "new.png").write_bytes((data / "circle" / "circle_0000.png").read_bytes()[:-1] + b"\0")
    _, changed = _cached_run(data, output)
    assert {PREPARE_TASK, "train", EVALUATE_TASK, EXPORT_TASK} <= changed
    assert json.loads((output / "data_report.json").read_text())["metrics"]["num_listed"] == \
        first_report["metrics"]["num_listed"] + 1


@pytest.mark.slow
def test_a_cached_rerun_retrains_when_the_weights_file_is_replaced_under_its_name(tmp_path):
    from kic.demo_data import write_demo_dataset
    from kic.model.backbones import build_feature_extractor

    data, output, weights = tmp_path / "images", tmp_path / "out", tmp_path / "backbone.weights.h5"
    write_demo_dataset(str(data), images_per_class=12, size=40)

    def save_new_weights():  # a randomly initialised backbone: other weights each time, under the same name
        build_feature_extractor(QUICK_BACKBONE, image_size=QUICK_IMAGE_SIZE, weights="none").save_weights(str(weights))

    save_new_weights()
    uses_the_file = ("--param", f"pretrained_weights={weights}")
    _, first = _cached_run(data, output, *uses_the_file)
    assert {PREPARE_TASK, "train", EVALUATE_TASK, EXPORT_TASK} <= first
    _, unchanged = _cached_run(data, output, *uses_the_file)
    assert unchanged == {"snapshot", EXPORT_TASK}
    save_new_weights()
    shown, changed = _cached_run(data, output, *uses_the_file)
    assert {"train", EVALUATE_TASK, EXPORT_TASK} <= changed and PREPARE_TASK not in changed  # the data is as it was
    assert "train: started" in shown
