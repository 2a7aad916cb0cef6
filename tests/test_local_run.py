"""`kic run`: the compiled pipeline through the KFP local runner.

The slow tests run the README's main command on the built-in data, exactly as
a new user runs it. The fast one checks how a run's outputs are gathered, on a
run folder laid out as KFP's local runner lays it out.
"""

import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from kic import artifacts
from kic.orchestration import local_run
from kic.pipelines.training_pipeline import EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK, PREPARE_TASK

KIC = [sys.executable, "-m", "kic.cli"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("kic-run") / "out"
    started = time.perf_counter()
    result = subprocess.run([*KIC, "run", "--output", str(output)], cwd=str(output.parent), capture_output=True,
                            text=True, timeout=1500)
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
    output, log, _ = default_run
    metrics = json.loads((output / "metrics.json").read_text())
    for name in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["accuracy"] >= 0.9, metrics


@pytest.mark.slow
def test_default_run_shows_progress_and_a_summary(default_run):
    _, log, _ = default_run
    assert "validate: all" in log and "parameters are valid" in log
    assert "val_accuracy:" in log and "images/s" in log  # the reference epoch-line format
    assert "kic run finished" in log and "model.tar.gz" in log
    assert "export: serving parity on" in log  # served originals vs evaluated records, measured at export


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


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


def _fake_run(root, *, exported: bool) -> str:
    """A run folder as KFP's local runner leaves it: <task>/<output key>."""
    run = root / "image-classification-training-2026-01-01"
    examples = run / PREPARE_TASK / artifacts.EXAMPLES_KEY
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        _write(examples / name, f"report {name}")
    _write(run / EVALUATE_TASK / artifacts.METRICS_KEY, json.dumps({"accuracy": 0.75}))
    _write(run / EVALUATE_TASK / artifacts.EVALUATION_KEY, '{"scalars": {"accuracy": 0.75}}')
    _write(run / EVALUATE_TASK / artifacts.EVALUATION_REPORT_KEY, "<html>evaluation</html>")
    _write(run / EVALUATE_TASK / artifacts.BLESSING_KEY, json.dumps({"blessed": exported, "reasons": ["why"]}))
    if exported:
        package = run / EXPORT_TASK / artifacts.PACKAGE_KEY
        _write(package / artifacts.LABEL_MAP, '{"a": 0}')
        _write(package / artifacts.SERVING_PARITY_REPORT, '{"num_files": 0}')
        with tarfile.open(package / artifacts.MODEL_TARBALL, "w:gz") as tar:
            tar.add(package / artifacts.LABEL_MAP, arcname=artifacts.LABEL_MAP)
        _write(run / PREDICT_TASK / artifacts.PREDICTIONS_KEY, '{"file": "x.jpg"}\n')
    return str(run)


def test_collect_outputs_gathers_what_a_user_wants(tmp_path):
    output = tmp_path / "out"
    outputs = local_run.collect_outputs(_fake_run(tmp_path, exported=True), str(output))
    assert outputs.metrics == {"accuracy": 0.75} and outputs.blessing["blessed"] is True
    assert json.loads((output / "metrics.json").read_text()) == {"accuracy": 0.75}
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML,
                 artifacts.EVALUATION_JSON, artifacts.BLESSING_JSON, "evaluation_report.html", "model.tar.gz",
                 artifacts.SERVING_PARITY_REPORT):
        assert (output / name).is_file(), name
    assert outputs.model == str(output / "model") and (output / "model" / artifacts.LABEL_MAP).read_text() == '{"a": 0}'
    assert outputs.predictions == str(output / "predictions.jsonl")


def test_collect_outputs_leaves_no_stale_model_from_an_earlier_run(tmp_path):
    output = tmp_path / "out"
    local_run.collect_outputs(_fake_run(tmp_path / "first", exported=True), str(output))
    outputs = local_run.collect_outputs(_fake_run(tmp_path / "second", exported=False), str(output))
    assert outputs.model is None and outputs.predictions is None and outputs.blessing["blessed"] is False
    assert not (output / "model").exists() and not (output / "model.tar.gz").exists()
    assert not (output / "predictions.jsonl").exists()
