"""Runs the compiled pipeline on this machine with the KFP local runner.

Each step runs as a subprocess in the current Python environment (where kic is
installed), exactly the component code that runs on a cluster. The outputs
are then gathered from the local pipeline root into one tidy folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import warnings

from kic import artifacts
from kic.pipelines.training_pipeline import (
    EVALUATE_TASK,
    EXPORT_TASK,
    PIPELINE_NAME,
    PREDICT_TASK,
    PREPARE_TASK,
    TRAIN_TASK,
)

# Output keys of the components (the names in their signatures).
EXAMPLES, MODEL, METRICS, BLESSING, PACKAGE = "examples", "model", "metrics", "blessing", "package"
PREDICTIONS = "predictions"
EVALUATION_REPORT = "report"


def run_compiled_pipeline(pipeline_yaml: str, arguments: dict, pipeline_root: str) -> str:
    """Runs the pipeline; returns the run's folder under pipeline_root."""
    from kfp import components, local

    os.makedirs(pipeline_root, exist_ok=True)
    before = set(os.listdir(pipeline_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = components.load_component_from_file(pipeline_yaml)
    with warnings.catch_warnings():
        # The subprocess runner warns that our image name lacks "python"; it
        # runs the same code in this environment, where kic is installed.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        pipeline(**arguments)
    new_runs = sorted(name for name in set(os.listdir(pipeline_root)) - before if name.startswith(PIPELINE_NAME))
    if not new_runs:
        raise RuntimeError(f"the local run left no output under {pipeline_root}")
    return os.path.join(pipeline_root, new_runs[-1])


def task_output(run_dir: str, task: str, output: str) -> str:
    return os.path.join(run_dir, task, output)


def collect_outputs(run_dir: str, output_dir: str) -> dict:
    """Copies what a user wants from a local run into output_dir; returns a summary."""
    os.makedirs(output_dir, exist_ok=True)
    examples = task_output(run_dir, PREPARE_TASK, EXAMPLES)
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        if os.path.exists(os.path.join(examples, name)):
            shutil.copyfile(os.path.join(examples, name), os.path.join(output_dir, name))
    metrics_path = task_output(run_dir, EVALUATE_TASK, METRICS)
    metrics = json.load(open(metrics_path)) if os.path.exists(metrics_path) else {}
    with open(os.path.join(output_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    report = task_output(run_dir, EVALUATE_TASK, EVALUATION_REPORT)
    if os.path.exists(report):
        shutil.copyfile(report, os.path.join(output_dir, "evaluation_report.html"))
    blessing_path = task_output(run_dir, EVALUATE_TASK, BLESSING)
    blessing = json.load(open(blessing_path)) if os.path.exists(blessing_path) else None
    if blessing is not None:
        shutil.copyfile(blessing_path, os.path.join(output_dir, artifacts.BLESSING_JSON))

    summary = {"metrics": metrics, "blessing": blessing, "run_dir": run_dir, "model": None}
    tarball = os.path.join(task_output(run_dir, EXPORT_TASK, PACKAGE), artifacts.MODEL_TARBALL)
    if os.path.exists(tarball):
        shutil.copyfile(tarball, os.path.join(output_dir, artifacts.MODEL_TARBALL))
        unpacked = os.path.join(output_dir, "model")
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        summary["model"] = unpacked
    predictions = task_output(run_dir, PREDICT_TASK, PREDICTIONS)
    if os.path.exists(predictions):
        summary["predictions"] = os.path.join(output_dir, "predictions.jsonl")
        shutil.copyfile(predictions, summary["predictions"])
    summary["trained_model_dir"] = task_output(run_dir, TRAIN_TASK, MODEL)
    return summary

