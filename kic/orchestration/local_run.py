"""Runs the compiled pipeline on this machine with the KFP local runner.

Each step runs as a subprocess in the current Python environment (where kic is
installed), exactly the component code that runs on a cluster. The outputs
are then gathered from the local pipeline root into one tidy folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings

from kic import artifacts, storage

EVALUATION_REPORT_HTML = "evaluation_report.html"
METRICS_JSON = "metrics.json"
MODEL_DIR = "model"


def run_compiled_pipeline(pipeline_yaml: str, arguments: dict, pipeline_root: str) -> str:
    """Runs the pipeline; returns the run's folder under pipeline_root."""
    from kfp import components, local

    from kic.pipelines.training_pipeline import PIPELINE_NAME

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


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What a local run produced, gathered in one folder."""

    run_dir: str
    metrics: dict
    blessing: dict | None
    model: str | None  # the unpacked package, when the gate blessed the model
    predictions: str | None


def collect_outputs(run_dir: str, output_dir: str, *, prediction_format: str = "jsonl") -> RunOutputs:
    """Copies what a user wants from a local run (the folder KFP's local
    runner wrote: one folder per task, one per output inside) into output_dir."""
    from kic.pipelines.training_pipeline import EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK, PREPARE_TASK

    def output(task: str, key: str) -> str:
        return os.path.join(run_dir, task, key)

    def copy(source: str, name: str) -> str | None:
        if not os.path.isfile(source):
            return None
        destination = os.path.join(output_dir, name)
        shutil.copyfile(source, destination)
        return destination

    os.makedirs(output_dir, exist_ok=True)
    # What an earlier run into the same folder left must not pass for this run's.
    for name in (artifacts.MODEL_TARBALL, MODEL_DIR, artifacts.BLESSING_JSON, artifacts.EVALUATION_JSON,
                 EVALUATION_REPORT_HTML, artifacts.SERVING_PARITY_REPORT, f"predictions.{prediction_format}"):
        storage.remove_tree(os.path.join(output_dir, name))
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        copy(os.path.join(output(PREPARE_TASK, artifacts.EXAMPLES_KEY), name), name)
    metrics_path = output(EVALUATE_TASK, artifacts.METRICS_KEY)
    metrics = _read_json(metrics_path) or {}
    storage.write_text(os.path.join(output_dir, METRICS_JSON), json.dumps(metrics, indent=2, sort_keys=True))
    copy(output(EVALUATE_TASK, artifacts.EVALUATION_KEY), artifacts.EVALUATION_JSON)
    copy(output(EVALUATE_TASK, artifacts.EVALUATION_REPORT_KEY), EVALUATION_REPORT_HTML)
    blessing_path = output(EVALUATE_TASK, artifacts.BLESSING_KEY)
    copy(blessing_path, artifacts.BLESSING_JSON)

    model = None
    tarball = copy(os.path.join(output(EXPORT_TASK, artifacts.PACKAGE_KEY), artifacts.MODEL_TARBALL),
                   artifacts.MODEL_TARBALL)
    if tarball:
        model = storage.extract_tarball(tarball, os.path.join(output_dir, MODEL_DIR))
    copy(os.path.join(output(EXPORT_TASK, artifacts.PACKAGE_KEY), artifacts.SERVING_PARITY_REPORT),
         artifacts.SERVING_PARITY_REPORT)
    predictions = copy(output(PREDICT_TASK, artifacts.PREDICTIONS_KEY), f"predictions.{prediction_format}")
    return RunOutputs(run_dir=run_dir, metrics=metrics, blessing=_read_json(blessing_path), model=model,
                      predictions=predictions)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
