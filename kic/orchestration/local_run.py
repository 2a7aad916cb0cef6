"""Runs a compiled pipeline (training or tuning) on this machine with the KFP local runner.

Each step runs as a subprocess in the current Python environment (where kic is
installed), exactly the component code that runs on a cluster. The outputs
are then gathered into one tidy folder: those the pipeline returns (prepare's
and evaluate's, which may come from an earlier run when cached) from where
they are, the exported model and the predictions from this run's folder (a
run's export is never cached: each run publishes its own version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Mapping

from kic import artifacts, storage
from kic.orchestration import output_folder

CACHE_DIR = ".kfp-cache"
EVALUATION_REPORT_HTML = "evaluation_report.html"
METRICS_JSON = "metrics.json"
MODEL_DIR = "model"
# What a tuning run adds, by the tuning pipeline's output names.
TUNING_FILES = {"trials": "trials.json", "tuning_report": "tuning_report.html",
                "tuning_report_markdown": "tuning_report.md", "best_hyperparameters": "best_hyperparameters.json"}


@dataclasses.dataclass(frozen=True)
class LocalRun:
    run_dir: str  # this run's folder: one folder per task that ran, one per output inside
    outputs: Mapping[str, str]  # the pipeline's outputs (training_pipeline.Outputs): name -> local path


def run_compiled_pipeline(pipeline_yaml: str, arguments: dict, pipeline_root: str, *,
                          cache: bool = False) -> LocalRun:
    """Runs the pipeline under pipeline_root. With ``cache``, a step whose
    inputs are those of a step of an earlier run under the same pipeline_root
    reuses its outputs, as on a cluster (the snapshot step is never cached,
    so changed sources rerun what depends on them)."""
    from kfp import components, local

    from kic import compat

    os.makedirs(pipeline_root, exist_ok=True)
    before = set(os.listdir(pipeline_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True,
               enable_caching=cache, cache_root=os.path.join(pipeline_root, CACHE_DIR))
    pipeline = components.load_component_from_file(pipeline_yaml)
    name = pipeline.pipeline_spec.pipeline_info.name  # each run's folder starts with it
    # This run's folder is the one kfp.local names for it: not the newest one, which may be another run's.
    with warnings.catch_warnings(), compat.kfp_local_run_names() as named:
        # The subprocess runner warns that our image name lacks "python"; it
        # runs the same code in this environment, where kic is installed.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = pipeline(**arguments)
    # Should a kfp release name its runs elsewhere: the one folder that appeared under the root during this run
    # (which holds the output folder's lock).
    new_runs = named[:1] or sorted(folder for folder in set(os.listdir(pipeline_root)) - before
                                   if folder.startswith(name))
    if len(new_runs) != 1 or not os.path.isdir(os.path.join(pipeline_root, new_runs[0])):
        raise RuntimeError(f"cannot tell which folder under {pipeline_root} is this run's: {new_runs}")
    return LocalRun(run_dir=os.path.join(pipeline_root, new_runs[0]),
                    outputs={name: output.path for name, output in task.outputs.items()})


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What a local run produced, gathered in one folder."""

    run_dir: str
    metrics: dict
    blessing: dict | None
    model: str | None  # the unpacked package, when the gate blessed the model
    predictions: str | None


def collect_outputs(run: LocalRun, output_dir: str, *, prediction_format: str = "jsonl") -> RunOutputs:
    """Copies what a user wants from a local run into output_dir."""
    from kic.pipeline_names import EXPORT_TASK, PREDICT_TASK

    def copy(source: str | None, name: str) -> str | None:
        if not source or not os.path.isfile(source):
            return None
        destination = os.path.join(output_dir, name)
        shutil.copyfile(source, destination)
        return destination

    os.makedirs(output_dir, exist_ok=True)
    # What an earlier run into the same folder left must not pass for this run's; a user's files stay (a run
    # refuses to start over them: cleared_folders).
    model_dir = os.path.join(output_dir, MODEL_DIR)
    ours = _in_model_tarball(output_dir)
    theirs = output_folder.foreign(model_dir, ours)
    output_folder.clear(model_dir, ours)
    for name in (artifacts.MODEL_TARBALL, artifacts.BLESSING_JSON, artifacts.EVALUATION_JSON,
                 EVALUATION_REPORT_HTML, artifacts.SERVING_PARITY_REPORT, f"predictions.{prediction_format}"):
        storage.remove_tree(os.path.join(output_dir, name))
    examples = run.outputs.get("examples")
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        copy(examples and os.path.join(examples, name), name)
    metrics = _read_json(run.outputs.get("metrics")) or {}
    storage.write_text(os.path.join(output_dir, METRICS_JSON), json.dumps(metrics, indent=2, sort_keys=True))
    copy(run.outputs.get("evaluation"), artifacts.EVALUATION_JSON)
    copy(run.outputs.get("evaluation_report"), EVALUATION_REPORT_HTML)
    copy(run.outputs.get("blessing"), artifacts.BLESSING_JSON)

    model = None
    tarball = copy(os.path.join(run.run_dir, EXPORT_TASK, artifacts.PACKAGE_KEY, artifacts.MODEL_TARBALL),
                   artifacts.MODEL_TARBALL)
    if tarball:
        model = storage.extract_tarball(tarball, model_dir)
        output_folder.record(model_dir, set(output_folder.files(model_dir)) - set(theirs))
    copy(os.path.join(run.run_dir, EXPORT_TASK, artifacts.PACKAGE_KEY, artifacts.SERVING_PARITY_REPORT),
         artifacts.SERVING_PARITY_REPORT)
    predictions = copy(os.path.join(run.run_dir, PREDICT_TASK, artifacts.PREDICTIONS_KEY),
                       f"predictions.{prediction_format}")
    return RunOutputs(run_dir=run.run_dir, metrics=metrics, blessing=_read_json(run.outputs.get("blessing")),
                      model=model, predictions=predictions)


def collect_tuning_outputs(run: LocalRun, output_dir: str, *, prediction_format: str = "jsonl") -> RunOutputs:
    """As ``collect_outputs``, and the search's: trials.json, the tuning report, best_hyperparameters.json."""
    os.makedirs(output_dir, exist_ok=True)
    for key, name in TUNING_FILES.items():
        storage.remove_tree(os.path.join(output_dir, name))
        if run.outputs.get(key) and os.path.isfile(run.outputs[key]):
            shutil.copyfile(run.outputs[key], os.path.join(output_dir, name))
    return collect_outputs(run, output_dir, prediction_format=prediction_format)


def cleared_folders(output_dir: str) -> dict:
    """The folders under ``output_dir`` that collecting a run's outputs clears, each with what counts as kic's
    in it when it has no list of kic's files (an older kic wrote it): for output_folder.refuse_foreign."""
    return {os.path.join(output_dir, MODEL_DIR): _in_model_tarball(output_dir)}


def _in_model_tarball(output_dir: str):
    """Whether a path under model/ is one that model.tar.gz unpacks to (model/ is its unpacked copy)."""
    import functools
    import tarfile

    @functools.cache
    def members() -> frozenset[str]:  # only asked when model/ has no list: listing a large archive takes seconds
        with contextlib.suppress(OSError, tarfile.TarError):
            with tarfile.open(os.path.join(output_dir, artifacts.MODEL_TARBALL)) as tarball:
                return frozenset(os.path.normpath(name) for name in tarball.getnames())
        return frozenset()

    return lambda path: os.path.normpath(path) in members()


def _read_json(path: str | None) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
