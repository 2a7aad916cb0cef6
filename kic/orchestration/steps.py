"""One function per pipeline step: the bodies of the KFP components.

Each takes the component's arguments as they arrive (artifacts are KFP
artifact objects, or anything with ``.path``, ``.metadata`` and
``.log_metric``), calls the plain modules that do the work, and records
outputs in the artifacts. This module does not import KFP; the plain modules
it calls know nothing of it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time

from kic import artifacts, storage
from kic.errors import UserError


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fails_cleanly(step):
    """A UserError (bad parameters or data, a missing file, an unreachable URI)
    ends the step with its message and a non-zero exit, not a traceback
    through KFP and TensorFlow. Anything else is a bug and keeps its
    traceback; so does every error with KIC_DEBUG=1."""

    @functools.wraps(step)
    def run(**arguments):
        try:
            return step(**arguments)
        except UserError as error:
            if os.environ.get("KIC_DEBUG"):
                raise
            log(f"{step.__name__.removesuffix('_step')} failed: {type(error).__name__}: {error}")
            raise SystemExit(1) from None

    return run


def _log_metrics(target, values: dict) -> None:
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            target.log_metric(name, float(value))


# ----------------------------------------------------------------- validate
@fails_cleanly
def validate_step(**values) -> int:
    """Checks every pipeline parameter; returns the short side prepare should
    store (see parameters.derive_short_side)."""
    from kic import parameters
    from kic.config import TrainingConfig

    parameters.validate(values)
    log(f"validate: all {len(values)} parameters are valid (backbone {values['backbone']!r}, "
        f"pretrained weights {values['pretrained_weights']!r})")
    config = TrainingConfig.from_dict({name: values[name] for name in parameters.HYPERPARAMETERS})
    if config.ignored_parameters():
        log(f"validate: ignored for optimizer {config.optimizer}: {', '.join(config.ignored_parameters())}")
    short_side = parameters.derive_short_side(backbone=values["backbone"], image_size=values["image_size"],
                                              requested=values["image_short_side"])
    log(f"validate: prepare will store images with a short side of at most {short_side} pixels")
    return short_side


# ------------------------------------------------------------------ prepare
@fails_cleanly
def prepare_step(*, source, examples, report, report_markdown, data_metrics, validation_source, test_source,
                 validation_fraction, test_fraction, seed, image_short_side, images_per_shard,
                 max_rejected_fraction, tfds_data_dir) -> None:
    from kic.data.prepare import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        source=source, output_dir=examples.path, validation_source=validation_source, test_source=test_source,
        validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
        image_short_side=image_short_side, images_per_shard=images_per_shard,
        max_rejected_fraction=max_rejected_fraction, tfds_data_dir=tfds_data_dir)
    try:
        result = prepare_dataset(options, progress=log)
    finally:
        # The report is the most useful output of a failed prepare: publish it either way.
        _copy_if_exists(os.path.join(examples.path, artifacts.DATA_REPORT_HTML), report.path)
        _copy_if_exists(os.path.join(examples.path, artifacts.DATA_REPORT_MARKDOWN), report_markdown.path)
    _log_metrics(data_metrics, result.report["metrics"])
    examples.metadata.update({"class_names": list(result.info.class_names), "fingerprint": result.info.fingerprint,
                              **{f"num_{name}": split.num_examples for name, split in result.info.splits.items()}})


def _copy_if_exists(source: str, destination: str) -> None:
    if os.path.exists(source):
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        shutil.copyfile(source, destination)


# -------------------------------------------------------------------- train
@fails_cleanly
def train_step(*, examples, model, training_metrics, backbone, pretrained_weights, image_size, base_model_uri,
               seed, **hyperparameters) -> None:
    from kic.config import TrainingConfig
    from kic.training import TrainOptions, train

    config = TrainingConfig.from_dict(hyperparameters)
    options = TrainOptions(backbone=backbone, pretrained_weights=pretrained_weights, image_size=image_size,
                           base_model=base_model_uri, seed=seed)
    result = train(examples.path, model.path, config, options, log=log)
    _log_metrics(training_metrics, result.best_metrics)
    training_metrics.log_metric("best_epoch", result.best_epoch)
    model.metadata.update({"framework": "keras", "backbone": backbone, "best_epoch": result.best_epoch,
                           "epochs_run": result.epochs_run})


# ----------------------------------------------------------------- evaluate
@fails_cleanly
def evaluate_step(*, examples, model, metrics, classification_metrics, evaluation, report, report_markdown, blessing,
                  gate_metric, gate_minimum, baseline_model_uri, max_regression, top_k) -> bool:
    from kic.evaluation.evaluate import GateOptions, evaluate_model

    outcome = evaluate_model(
        examples.path, model.path, top_k=top_k, log=log,
        gate_options=GateOptions(metric=gate_metric, minimum=gate_minimum,
                                 baseline_model_uri=baseline_model_uri, max_regression=max_regression))
    result = outcome.result
    _log_metrics(metrics, result.scalars)
    storage.write_text(metrics.path, json.dumps(result.scalars, indent=2, sort_keys=True))
    storage.write_text(evaluation.path, result.to_json())
    evaluation.metadata.update({"split": outcome.split, "num_classes": len(result.class_names)})
    classification_metrics.log_confusion_matrix(list(result.class_names), result.confusion_matrix)
    if result.roc_curve:
        classification_metrics.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"],
                                             result.roc_curve["thresholds"])
    storage.write_text(report.path, outcome.html)
    storage.write_text(report_markdown.path, outcome.markdown)
    storage.write_text(blessing.path, outcome.blessing.to_json())
    blessing.metadata.update({"blessed": outcome.blessing.blessed, "reasons": list(outcome.blessing.reasons)})
    return outcome.blessing.blessed


# ------------------------------------------------------------------- export
@fails_cleanly
def export_step(*, model, evaluation, package, destination_uri, tflite, top_k, examples=None) -> None:
    from kic.serving.export import ExportOptions, export_model

    evaluation_metrics = json.loads(storage.read_text(evaluation.path)) if os.path.exists(evaluation.path) else {}
    result = export_model(model.path, package.path, ExportOptions(
        destination_uri=destination_uri, tflite=tflite, top_k=top_k, evaluation_metrics=evaluation_metrics,
        examples=examples.path if examples is not None else ""))
    log(f"export: SavedModel verified (max abs diff {result.max_abs_diff:.2e}); package {result.tarball}")
    package.metadata.update({"framework": "tensorflow", "format": "saved_model", "tarball": result.tarball})
    if result.parity is not None:
        for line in result.parity.summary_lines():
            log(f"export: {line}")
        package.metadata.update({"serving_parity_files": len(result.parity.files),
                                 "serving_parity_top1_agreement": result.parity.agreement,
                                 "serving_parity_max_abs_diff": result.parity.max_abs_diff})
    if destination_uri:
        log(f"export: copied to {destination_uri}")
    sys.stdout.flush()


# ------------------------------------------------------------ batch predict
@fails_cleanly
def batch_predict_step(*, package, inputs, predictions, prediction_summary, output_format, batch_size,
                       top_k) -> None:
    from kic.serving.predict import format_summary, predict

    summary = predict(package.path, inputs, predictions.path, batch_size=batch_size, top_k=top_k,
                      output_format=output_format)
    log(format_summary(summary))
    _log_metrics(prediction_summary, {"total": summary.total, "succeeded": summary.succeeded,
                                      "failed": summary.failed, "skipped_files": summary.skipped_files})
    predictions.metadata.update({"format": output_format, "rows": summary.total})
