"""`kic run` end to end: the compiled pipeline through the KFP local runner.

The first test is the README's main command on the built-in data, exactly as
a new user runs it; the others check that bad input fails fast and clearly.
"""

import json
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

KIC = [sys.executable, "-m", "kic.cli"]


def _kic(*args, cwd, timeout):
    return subprocess.run([*KIC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("kic-run") / "out"
    started = time.perf_counter()
    result = _kic("run", "--output", str(output), cwd=str(output.parent), timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return output, result.stdout + result.stderr, time.perf_counter() - started


@pytest.mark.slow
def test_default_run_writes_every_output(default_run):
    output, log, _ = default_run
    for name in ("model.tar.gz", "metrics.json", "data_report.json", "data_report.md", "data_report.html",
                 "evaluation_report.html", "pipeline.yaml"):
        assert (output / name).is_file(), name
    with tarfile.open(output / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"1/saved_model.pb", "class_label_to_prediction_index.json", "model_info.json", "model.keras"} <= names
    assert (output / "model" / "1" / "saved_model.pb").is_file()
    label_map = json.loads((output / "model" / "class_label_to_prediction_index.json").read_text())
    assert label_map == {"circle": 0, "square": 1, "triangle": 2}
    report = json.loads((output / "data_report.json").read_text())
    assert report["metrics"]["num_classes"] == 3


@pytest.mark.slow
def test_default_run_really_learned(default_run):
    output, log, _ = default_run
    metrics = json.loads((output / "metrics.json").read_text())
    for name, value in metrics.items():
        if name in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
            assert 0.0 <= value <= 1.0, name
    assert metrics["accuracy"] >= 0.9, metrics


@pytest.mark.slow
def test_default_run_shows_progress_and_a_summary(default_run):
    _, log, _ = default_run
    assert "val_accuracy:" in log and "images/s" in log  # the reference epoch-line format
    assert "kic run finished" in log and "model.tar.gz" in log


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


def test_invalid_parameters_fail_in_seconds_with_every_problem(tmp_path):
    result = _kic("run", "--output", str(tmp_path / "out"), "--param", "epochs=0", "--param", "learning_rate=2",
                  "--param", "optimizer=lbfgs", "--param", "eval_metric=auc", "--param", "backbone=resnet5O",
                  "--param", "batch_siz=8", cwd=str(tmp_path), timeout=300)
    assert result.returncode == 2
    for expected in ("epochs=0", "learning_rate=2", "lbfgs", "binary_mode", "resnet5O", "did you mean 'batch_size'"):
        assert expected in result.stderr, expected
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "runs").exists()  # rejected before any step started


def test_reference_hyperparameter_json_is_validated(tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"epochs": "zero", "train_only_top_layer": "True", "eps": "2"}))
    result = _kic("run", "--output", str(tmp_path / "out"), "--hyperparameters", str(path), cwd=str(tmp_path),
                  timeout=300)
    assert result.returncode == 2
    assert "epochs='zero'" in result.stderr and "epsilon" in result.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = _kic("run", "--output", str(tmp_path / "out"), "--data", str(tmp_path / "nope"), cwd=str(tmp_path),
                  timeout=300)
    assert result.returncode == 2 and "no such file or folder" in result.stderr
