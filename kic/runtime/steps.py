"""One function per pipeline step: the bodies of the KFP components.

Each takes the component's arguments as they arrive (artifacts are KFP
artifact objects, or anything with ``.path``, ``.metadata`` and
``.log_metric``), calls the plain modules that do the work, and records
outputs in the artifacts. This module does not import KFP; the plain modules
it calls know nothing of it.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import resource
import shutil
import sys
import time
import uuid

from kic import artifacts, storage
from kic.config import DEFAULT_CHECKPOINT_EVERY_STEPS
from kic.errors import UserError
from kic.runtime import quiet_startup


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fails_cleanly(step=None, *, tensorflow: bool = True):
    """A UserError (bad parameters or data, a missing file, an unreachable URI)
    ends the step with its message and a non-zero exit, not a traceback
    through KFP and TensorFlow. Anything else is a bug and keeps its
    traceback; so does every error with KIC_DEBUG=1. A step that uses
    TensorFlow imports it first, without its startup noise
    (kic.runtime.quiet_startup)."""
    if step is None:
        return functools.partial(fails_cleanly, tensorflow=tensorflow)
    name = step.__name__.removesuffix("_step")

    @functools.wraps(step)
    def run(**arguments):
        started = time.perf_counter()
        try:
            if tensorflow:
                quiet_startup.import_tensorflow_quietly()
            else:
                quiet_startup.quiet_log_level()
            _reach_kfp_store(arguments)
            return step(**arguments)
        except UserError as error:
            if os.environ.get("KIC_DEBUG"):
                raise
            log(f"{name} failed: {type(error).__name__}: {error}")
            raise SystemExit(1) from None
        finally:
            log(f"{name}: {time.perf_counter() - started:.1f} s, {_peak_memory()}")

    return run


def _peak_memory(who: int = resource.RUSAGE_SELF) -> str:
    """Peak resident memory of this process (or of its largest child): what
    the steps' memory requests are sized from (kic.pipelines.placement)."""
    per_gb = 1024**3 if sys.platform == "darwin" else 1024**2  # ru_maxrss: bytes on macOS, kilobytes on Linux
    return f"peak memory {resource.getrusage(who).ru_maxrss / per_gb:.2f} GB"


def _log_metrics(target, values: dict, *, write_file: bool = True) -> None:
    """The numbers in ``values`` as the artifact's metrics (what the UI shows),
    and as its file, which a metrics artifact otherwise lacks: a cached output
    whose file is missing counts as gone (kfp.local), and the file is what
    other tools read."""
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            target.log_metric(name, float(value))
    if write_file:
        _write_metadata(target)


def _write_metadata(target) -> None:
    storage.write_text(target.path, json.dumps(target.metadata, indent=2, sort_keys=True))


# ----------------------------------------------------------------- validate
@fails_cleanly(tensorflow=False)
def validate_step(**values) -> int:
    """Checks every pipeline parameter; returns the short side prepare should
    store (see parameters.derive_short_side), sized for the model that will
    really train: the earlier model's, when training continues one."""
    from kic import parameters
    from kic.config import TrainingConfig
    from kic.model import model_info, weights

    if values.get("pretrained_weights") == weights.IMAGENET:  # asked of Keras
        quiet_startup.import_tensorflow_quietly()
    parameters.validate(values)
    log(f"validate: all {len(values)} parameters are valid (backbone {values['backbone']!r}, "
        f"pretrained weights {values['pretrained_weights']!r})")
    config = TrainingConfig.from_dict({name: values[name] for name in parameters.HYPERPARAMETERS})
    if config.ignored_parameters():
        log(f"validate: ignored for optimizer {config.optimizer}: {', '.join(config.ignored_parameters())}")
    backbone, image_size = values["backbone"], values["image_size"]
    if values["base_model_uri"]:
        earlier = model_info.read(values["base_model_uri"])
        backbone, image_size = earlier.backbone, earlier.image_size
        log(f"validate: training continues the earlier model's backbone {backbone} at {image_size}x{image_size} "
            "(the backbone and image_size parameters are not used)")
    short_side = parameters.derive_short_side(backbone=backbone, image_size=image_size,
                                              requested=values["image_short_side"])
    log(f"validate: prepare will store images with a short side of at most {short_side} pixels")
    return short_side


# ----------------------------------------------------------------- snapshot
@fails_cleanly(tensorflow=False)
def snapshot_step(*, data_source, validation_source, test_source, tfds_data_dir, base_model_uri,
                  baseline_model_uri, pretrained_weights="", search_space="",
                  export_uri="") -> tuple[str, str, str, str, str, str]:
    """Fingerprints (see kic.data.snapshot): of the data, the earlier model, the
    baseline model, the pretrained weights file and the search space file; ""
    for what is not a file (none given, ImageNet weights, a search space given
    as JSON text: the parameter itself is in the cache keys). And the baseline
    itself, resolved now (kic.evaluation.baseline: by default what
    export_uri/LATEST names), so evaluate judges against the model served when
    the run started, and its cache key changes when LATEST moves."""
    from kic.data.snapshot import content_fingerprint, fingerprint
    from kic.evaluation import baseline
    from kic.model import weights
    from kic.tuning import space

    data = fingerprint(data_source, validation_source, test_source, tfds_data_dir=tfds_data_dir)
    base_model = fingerprint(base_model_uri) if base_model_uri else ""
    resolved = baseline.resolve(baseline_model_uri, export_uri)
    baseline_model = fingerprint(resolved.uri) if resolved.uri else ""
    weights_file = weights.choice(pretrained_weights)
    pretrained = fingerprint(weights_file) if weights_file not in (None, weights.IMAGENET) else ""
    searched = content_fingerprint(search_space.strip()) if space.names_a_file(search_space) else ""
    found = {"data": data, "base model": base_model, "baseline model": baseline_model,
             "pretrained weights": pretrained, "search space": searched}
    log("snapshot: " + ", ".join(f"{what} {value}" for what, value in found.items() if value))
    if resolved.uri:
        log(f"snapshot: the new model will be compared with {resolved.describe()}")
    return data, base_model, baseline_model, pretrained, searched, resolved.uri


# ------------------------------------------------------------------ prepare
@fails_cleanly
def prepare_step(*, source, examples, report, report_markdown, data_metrics, validation_source, test_source,
                 validation_fraction, test_fraction, seed, image_short_side, images_per_shard,
                 max_rejected_fraction, tfds_data_dir, source_fingerprint="") -> None:
    from kic.data.prepare import DataQualityError, PrepareOptions, prepare_dataset

    options = PrepareOptions(
        source=source, output_dir=examples.path, validation_source=validation_source, test_source=test_source,
        validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
        image_short_side=image_short_side, images_per_shard=images_per_shard,
        max_rejected_fraction=max_rejected_fraction, tfds_data_dir=tfds_data_dir)
    try:
        result = prepare_dataset(options, progress=log)
    except DataQualityError:
        # On a cluster the outputs of a failed task are not uploaded: the log is all a user sees.
        _log_rejections(os.path.join(examples.path, artifacts.DATA_REPORT_JSON))
        raise
    finally:
        # The report is the most useful output of a failed prepare: publish it either way.
        _copy_if_exists(os.path.join(examples.path, artifacts.DATA_REPORT_HTML), report.path)
        _copy_if_exists(os.path.join(examples.path, artifacts.DATA_REPORT_MARKDOWN), report_markdown.path)
    log(f"prepare: largest image worker's {_peak_memory(resource.RUSAGE_CHILDREN)}")
    _warn_about_the_data(result.report)
    _log_metrics(data_metrics, result.report["metrics"])
    examples.metadata.update({"class_names": list(result.info.class_names), "fingerprint": result.info.fingerprint,
                              "source_fingerprint": source_fingerprint,
                              **{f"num_{name}": split.num_examples for name, split in result.info.splits.items()}})


REJECTIONS_LOGGED = 20


def _warn_about_the_data(report: dict) -> None:
    """What a person should look at in the data report, though prepare succeeded."""
    metrics = report["metrics"]
    if metrics["num_rejected"] or metrics["num_duplicates"]:
        log(f"prepare: warning: {metrics['num_rejected']} file(s) rejected and {metrics['num_duplicates']} "
            f"duplicate(s) dropped of {metrics['num_listed']}; the data report shows which and why")
    for warning in report.get("warnings", []):
        log(f"prepare: warning: {warning}")


def _log_rejections(report_path: str) -> None:
    if not os.path.exists(report_path):
        return
    rejected = json.loads(storage.read_text(report_path))["rejected"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected["by_reason"].items()))
    log(f"prepare: {rejected['count']} files rejected ({rejected['fraction']:.1%}): {reasons}")
    for entry in rejected["files"][:REJECTIONS_LOGGED]:
        log(f"prepare:   {entry['file']}: {entry['reason']}: {entry.get('detail', '')}")
    if len(rejected["files"]) > REJECTIONS_LOGGED:
        log(f"prepare:   ... and {len(rejected['files']) - REJECTIONS_LOGGED} more in the data report")


def _copy_if_exists(source: str, destination: str) -> None:
    if os.path.exists(source):
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        shutil.copyfile(source, destination)


# -------------------------------------------------------------------- train
@fails_cleanly
def train_step(*, examples, model, training_metrics, backbone, pretrained_weights, image_size, base_model_uri,
               seed, required_gpus=0, tf_data_service="", precision="auto", jit_compile="auto",
               base_model_fingerprint="", pretrained_weights_fingerprint="", checkpoint_uri="",
               checkpoint_every_steps=DEFAULT_CHECKPOINT_EVERY_STEPS, **hyperparameters) -> None:
    from kic.config import TrainingConfig
    from kic.training import TrainOptions, train

    config = TrainingConfig.from_dict(hyperparameters)
    options = TrainOptions(backbone=backbone, pretrained_weights=pretrained_weights, image_size=image_size,
                           base_model=base_model_uri, seed=seed, required_gpus=required_gpus,
                           data_service=tf_data_service, precision=precision, jit_compile=jit_compile,
                           **_checkpointing(model, checkpoint_uri, checkpoint_every_steps))
    result = train(examples.path, model.path, config, options, log=log)
    # Every replica of a Vertex AI multi-replica job runs this executor and writes its output (the
    # artifacts' metadata) as it ends: the same metadata everywhere, but only the chief writes files.
    _log_metrics(training_metrics, {**result.best_metrics, "best_epoch": result.best_epoch},
                 write_file=result.is_chief)
    model.metadata.update({"framework": "keras", "backbone": backbone, "best_epoch": result.best_epoch,
                           "epochs_run": result.epochs_run, "base_model_fingerprint": base_model_fingerprint,
                           "pretrained_weights_fingerprint": pretrained_weights_fingerprint})


# `kic train` (kic.cli.single_steps) runs train_step on its own: its OUTPUT_DIR holds the step's two outputs,
# and it takes the pipeline parameters the step's signature names, so that one added to the step is taken too.
TRAIN_OUTPUTS = {"model": "model", "metrics": "training_metrics.json"}
TRAIN_STEP_ARGUMENTS = {"required_gpus": "accelerator_count"}  # train_step's name: the pipeline parameter's


def train_parameters() -> tuple[str, ...]:
    """The pipeline parameters train_step takes besides the hyperparameters, in the order of its signature."""
    import inspect

    from kic import parameters

    named = (TRAIN_STEP_ARGUMENTS.get(name, name) for name, argument in inspect.signature(train_step).parameters.items()
             if argument.kind is inspect.Parameter.KEYWORD_ONLY)
    return tuple(name for name in named if name in parameters.PARAMETERS_BY_NAME)


def _checkpointing(model, checkpoint_uri: str, every_steps: int) -> dict:
    """train's checkpoint options: ``checkpoint_uri``, or the folder next to
    the task's model output, which a retry of the task gets again and a new
    run does not (kic.training.checkpoints.default_location)."""
    from kic.training import checkpoints

    why_not = ""
    if not checkpoint_uri and model.uri.startswith(storage.MINIO_SCHEME) and not storage.can_reach_minio():
        why_not = _connect_kfp_store(model.uri)
    uri = checkpoint_uri or checkpoints.default_location(model.uri, model.path)
    if not uri:
        log(f"train: warning: no checkpoints: kic cannot write to the pipeline root of {model.uri}"
            f"{f' ({why_not})' if why_not else ''}; set checkpoint_uri to a gs:// or s3:// folder to resume after "
            "a preemption, or give train the store's keys (kic compile --target kfp --s3-credentials-secret "
            "--s3-endpoint, see docs/migration.md)")
    return {"checkpoint_uri": uri, "checkpoint_every_steps": every_steps}


def _reach_kfp_store(arguments: dict) -> None:
    """A step given a ``minio://`` URI (as the Kubeflow Pipelines UI shows its
    artifacts, say a baseline model) reads it from the cluster's own store."""
    given = {name: value for name, value in arguments.items()
             if isinstance(value, str) and value.startswith(storage.MINIO_SCHEME)}
    if not given or storage.can_reach_minio():
        return
    name, uri = next(iter(given.items()))
    why_not = _connect_kfp_store(uri)
    if why_not:
        raise UserError(f"{name}={uri}: kic cannot reach Kubeflow Pipelines' store ({why_not}); give an s3:// "
                        "URI with the store's endpoint and keys (kic compile --target kfp --s3-credentials-secret "
                        "--s3-endpoint, see docs/migration.md)")


def _connect_kfp_store(uri: str) -> str:
    """Points minio:// at Kubeflow Pipelines' own store, found as this pod's
    launcher finds it; "" when found, else why not."""
    from kic.runtime import kfp_artifact_store

    try:
        found = kfp_artifact_store.find(uri)
    except kfp_artifact_store.NotFound as reason:
        return str(reason)
    storage.use_for_minio(found.store)
    log(f"minio:// is Kubeflow Pipelines' store: {found.source}")
    return ""


# ----------------------------------------------------------------- evaluate
@fails_cleanly
def evaluate_step(*, examples, model, metrics, classification_metrics, evaluation, report, report_markdown, blessing,
                  gate_metric, gate_minimum, baseline_model_uri, max_regression, top_k,
                  baseline_fingerprint="", allow_removed_classes=False, comparison=None) -> bool:
    from kic.evaluation.evaluate import GateOptions, evaluate_model

    outcome = evaluate_model(
        examples.path, model.path, top_k=top_k, log=log,
        gate_options=GateOptions(metric=gate_metric, minimum=gate_minimum,
                                 baseline_model_uri=baseline_model_uri, max_regression=max_regression,
                                 allow_removed_classes=allow_removed_classes))
    result = outcome.result
    _log_metrics(metrics, result.scalars)
    whole = result.to_dict()
    if outcome.comparison:
        whole["comparison"] = outcome.comparison.to_dict()
    storage.write_text(evaluation.path, json.dumps(whole, separators=(",", ":"), allow_nan=False))
    evaluation.metadata.update({"split": outcome.split, "num_classes": len(result.class_names),
                                "baseline_fingerprint": baseline_fingerprint})
    _log_confusion_matrix(classification_metrics, result)
    if result.roc_curve:
        classification_metrics.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"],
                                             result.roc_curve["thresholds"])
    _write_metadata(classification_metrics)
    storage.write_text(report.path, outcome.html)
    storage.write_text(report_markdown.path, outcome.markdown)
    storage.write_text(blessing.path, outcome.blessing.to_json())
    # What the run page shows of a blocked model: the run itself succeeds.
    blessing.metadata.update({**outcome.blessing.to_dict(), "report": report.uri})
    if comparison is not None:
        _log_metrics(comparison, outcome.comparison.ui_metrics() if outcome.comparison else {})
    if not outcome.blessing.blessed:
        log(f"evaluate: {outcome.blessing.summary()} The report: {report.uri}")
    return outcome.blessing.blessed


# KFP keeps metrics in its metadata store, whose messages are capped at 4 MB: a
# 1,000-class matrix is about 11 MB. The UI gets the most confused classes; the
# evaluation artifact and the HTML report have the whole matrix.
UI_CONFUSION_CLASSES = 50


def _log_confusion_matrix(target, result) -> None:
    from kic.evaluation.metrics import most_confused_classes

    shown = most_confused_classes(result.confusion_matrix, UI_CONFUSION_CLASSES)
    target.log_confusion_matrix([result.class_names[i] for i in shown],
                                [[result.confusion_matrix[row][column] for column in shown] for row in shown])
    if len(shown) < len(result.class_names):
        target.metadata["confusionMatrixNote"] = (f"the {len(shown)} of {len(result.class_names)} classes with the "
                                                  "most errors; the evaluation artifact has them all")


# ------------------------------------------------------------------- export
@fails_cleanly
def export_step(*, model, evaluation, package, destination_uri, tflite, top_k, run_id="",
                examples=None, serving_skew_action="block") -> tuple[str, dict, str]:
    """Returns what a model registry is told: the SavedModel folder's URI, labels and a description."""
    from kic.model import model_info
    from kic.serving import registry
    from kic.serving.export import ExportOptions, export_model

    evaluation_metrics = json.loads(storage.read_text(evaluation.path)) if os.path.exists(evaluation.path) else {}
    if run_id.startswith("{{$"):
        # Kubeflow Pipelines before 2.5 passes the run-id placeholder on as it is: one folder for every run
        # would let each run overwrite the last.
        run_id = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        log(f"export: the platform did not fill in the run's id (Kubeflow Pipelines before 2.5); version {run_id}")
    result = export_model(model.path, package.path, ExportOptions(
        destination_uri=destination_uri, version=run_id, tflite=tflite, top_k=top_k,
        evaluation_metrics=evaluation_metrics, examples=examples.path if examples is not None else "",
        serving_skew_action=serving_skew_action))
    log(f"export: SavedModel verified (max abs diff {result.max_abs_diff:.2e}); package {result.tarball}")
    package.metadata.update({"framework": "tensorflow", "format": "saved_model", "tarball": result.tarball})
    if result.parity is not None:
        for line in result.parity.summary_lines():
            log(f"export: {line}")
        if result.parity.clearly_exceeded:  # only reached with serving_skew_action=warn
            log(f"export: warning: {result.parity.skew_message()}; exported anyway (serving_skew_action=warn)")
        package.metadata.update({"serving_parity_files": len(result.parity.files),
                                 "serving_parity_pixel_mean_diff": result.parity.pixel_mean_diff,
                                 "serving_parity_top1_agreement": result.parity.agreement,
                                 "serving_parity_max_abs_diff": result.parity.max_abs_diff})
    if result.published:
        package.metadata["published"] = result.published
        log(f"export: published to {result.published}")
    sys.stdout.flush()
    info = model_info.load(package.path)
    return (storage.join(package.uri, artifacts.SAVED_MODEL_VERSION_DIR), registry.labels(info),
            registry.description(info, evaluation_metrics))


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


# ------------------------------------------------------------------- tuning
@fails_cleanly
def plan_trials_step(*, settings, search_space, strategy, trials, objective_metric, objective_direction, parallelism,
                     gate_metric, top_k, seed, search_space_fingerprint="", **hyperparameters) -> list:
    """Checks the search and plans its first wave (see kic.tuning)."""
    from kic import parameters
    from kic.tuning import settings as tuning_settings
    from kic.tuning import strategies
    from kic.tuning import trials as tuning_trials

    values = parameters.validate({**hyperparameters, "gate_metric": gate_metric, "top_k": top_k, "seed": seed},
                                 reachability=False)
    resolved = tuning_settings.resolve(search_space, values=values, strategy=strategy, trials=trials,
                                       objective_metric=objective_metric, objective_direction=objective_direction,
                                       parallelism=parallelism)
    for note in resolved.notes:
        log(f"plan_trials: {note}")
    log(f"plan_trials: {resolved.strategy} search of {resolved.trials} trials ({resolved.first_wave}, then "
        f"{resolved.trials - resolved.first_wave}) for the {resolved.objective.direction[:3]}imum of "
        f"{resolved.objective.metric}, seed {resolved.seed}, over: "
        + "; ".join(f"{dimension.name} {dimension.describe()}" for dimension in resolved.dimensions))
    planned = tuning_trials.plan(resolved, 1, strategies.first_wave(resolved), first_index=0)
    for item in planned:
        log(f"plan_trials: {tuning_trials.describe(item)}")
    storage.write_text(settings.path, json.dumps(resolved.to_json(), indent=2))
    settings.metadata["search_space_fingerprint"] = search_space_fingerprint
    return planned


@fails_cleanly
def plan_second_wave_step(*, settings, first_wave) -> list:
    from kic.tuning import strategies
    from kic.tuning import trials as tuning_trials
    from kic.tuning.settings import Settings

    settings = Settings.from_json(json.loads(storage.read_text(settings.path)))
    planned = tuning_trials.plan(settings, 2, strategies.second_wave(settings, first_wave),
                                 first_index=settings.first_wave)
    for item in planned:
        log(f"plan_second_wave: {tuning_trials.describe(item)}")
    return planned


@fails_cleanly
def trial_step(*, examples, model, trial_metrics, trial, backbone, pretrained_weights, image_size, base_model_uri,
               seed, required_gpus=0, precision="auto", jit_compile="auto", base_model_fingerprint="",
               pretrained_weights_fingerprint="", checkpoint_uri="",
               checkpoint_every_steps=DEFAULT_CHECKPOINT_EVERY_STEPS) -> dict:
    from kic.training import TrainOptions
    from kic.tuning import trials as tuning_trials

    trial_checkpoints = storage.join(checkpoint_uri, f"trial-{trial['trial']}") if checkpoint_uri else ""
    options = TrainOptions(backbone=backbone, pretrained_weights=pretrained_weights, image_size=image_size,
                           base_model=base_model_uri, seed=seed, required_gpus=required_gpus,
                           precision=precision, jit_compile=jit_compile,
                           **_checkpointing(model, trial_checkpoints, checkpoint_every_steps))
    record = tuning_trials.run(trial, examples.path, model.path, options, log=log)
    _log_metrics(trial_metrics, {"objective": record.objective, "epochs_run": record.epochs_run,
                                 "seconds": record.seconds, "succeeded": int(record.status == tuning_trials.SUCCEEDED)})
    model.metadata.update({"framework": "keras", "backbone": backbone, "trial": record.trial, "status": record.status,
                           "objective": record.objective, "best_epoch": record.best_epoch,
                           "epochs_run": record.epochs_run, "base_model_fingerprint": base_model_fingerprint,
                           "pretrained_weights_fingerprint": pretrained_weights_fingerprint})
    # No nulls: kfp.local (2.17) cannot pass a None inside a struct (a failed trial has no objective).
    return {name: value for name, value in record.to_json().items() if value is not None}


@fails_cleanly
def select_best_step(*, settings, first_wave, second_wave, first_wave_models, second_wave_models, best_model, trials,
                     best_hyperparameters, report, report_markdown, tuning_metrics) -> None:
    from kic.tuning import report as tuning_report
    from kic.tuning import trials as tuning_trials
    from kic.tuning.settings import Settings

    settings = Settings.from_json(json.loads(storage.read_text(settings.path)))
    results = tuning_trials.collected([*first_wave, *second_wave], settings)
    tuning_trials.check_complete(results, settings)
    for result in sorted(results, key=lambda result: result.trial):
        outcome = (f"{settings.objective.metric} {result.objective:.4f}" if result.status == tuning_trials.SUCCEEDED
                   else result.error)
        log(f"select_best: trial {result.trial} {result.status}: {outcome}")
    winner = tuning_trials.best(results, settings.objective)
    document = tuning_report.trials_document(settings, results, winner)
    storage.write_text(trials.path, json.dumps(document, indent=2))
    storage.write_text(best_hyperparameters.path,
                       json.dumps(tuning_report.best_hyperparameters(settings, winner), indent=2))
    storage.write_text(report.path, tuning_report.render_html(document))
    storage.write_text(report_markdown.path, tuning_report.render_markdown(document))
    _log_metrics(tuning_metrics, {f"best_{settings.objective.metric}": winner.objective, "best_trial": winner.trial,
                                  "succeeded": document["succeeded"], "failed": document["failed"]})

    source = next(model for model in [*first_wave_models, *second_wave_models] if _trial_of(model) == winner.trial)
    shutil.copytree(source.path, best_model.path, dirs_exist_ok=True)
    best_model.metadata.update({**source.metadata, "trial": winner.trial, "objective": winner.objective})
    log(f"select_best: trial {winner.trial} wins with {settings.objective.metric} {winner.objective:.4f}: "
        + ", ".join(f"{name}={value}" for name, value in winner.hyperparameters.items()))


def _trial_of(model) -> int | None:
    """The trial a trial's model artifact belongs to, from the record inside it."""
    from kic.tuning.trials import TRIAL_JSON

    path = os.path.join(model.path, TRIAL_JSON)
    return int(json.loads(storage.read_text(path))["trial"]) if os.path.exists(path) else None
