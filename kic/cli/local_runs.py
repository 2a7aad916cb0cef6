"""kic run and kic tune: the training pipeline, or the hyperparameter search,
on this machine (KFP's local runner), into one output folder."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from kic import artifacts
from kic.cli import options
from kic.cli.output import LOGS_DIR, note, print_summary
from kic.errors import ParameterError

DEFAULT_OUTPUT = "kic-output"
DEFAULT_TUNE_OUTPUT = "kic-tune-output"
LOCAL_DATA_HELP = ("training images: folder, gs:// or s3:// prefix, manifest or tfds:NAME; default: the built-in "
                   "demo dataset")

# The built-in demo trains from scratch on CPU in a few minutes: no download,
# a small backbone at a small input size, and enough epochs to really learn.
DEMO_PARAMETERS = {
    "backbone": "mobilenet_v3_small_100_224",
    "pretrained_weights": "none",
    "image_size": 64,
    "epochs": 12,
    "learning_rate": 0.002,
    "augmentation": True,
    "augmentation_random_flip": "horizontal",
    "augmentation_random_rotation": 0.1,
    "augmentation_random_zoom": 0.1,
}


def add_commands(commands) -> None:
    run = commands.add_parser("run", help="run the whole pipeline on this machine (KFP local runner)")
    options.add_parameter_options(run, data_help=LOCAL_DATA_HELP)
    run.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})")
    run.add_argument("--cache", action="store_true",
                     help="reuse the outputs of steps whose inputs are unchanged since an earlier run into the same "
                          "--output, as clusters do (changed images are noticed: the snapshot step is never cached)")
    run.add_argument("--resume", action="store_true",
                     help="continue the last run into the same --output that did not finish (preempted, killed): "
                          "steps that finished under --cache are reused, train resumes from its checkpoint in "
                          f"<output>/{artifacts.CHECKPOINTS_DIR}; without it a run starts afresh")
    run.add_argument("--verbose", action="store_true",
                     help="show everything the steps and KFP write (always in <output>/logs: run.log and one file per "
                          "step)")
    run.add_argument("--list-params", action="store_true", help="list the pipeline parameters and exit")
    run.set_defaults(handler=_run)

    tune = commands.add_parser("tune", help="search hyperparameters on this machine: trials in parallel on data "
                                            "prepared once, then evaluate and export the best (KFP local runner)")
    options.add_parameter_options(tune, data_help=LOCAL_DATA_HELP)
    tune.add_argument("--search-space", required=True, metavar="FILE.json",
                      help="the hyperparameter ranges: kic's JSON, or the reference's tuning job (its ParameterRanges, "
                           "objective, strategy, limits and static hyperparameters) as is")
    tune.add_argument("--trials", type=int, default=0, metavar="N",
                      help="number of trials (default: the search space's, else 8; grid: the whole grid)")
    tune.add_argument("--parallelism", type=int, default=0, metavar="P",
                      help="trials at once (default: the search space's, else 1); the local runner runs at most 2")
    tune.add_argument("--strategy", default="", help="random, sobol, tpe or grid (default: the search space's, "
                                                     "else random)")
    tune.add_argument("--objective", default="", metavar="METRIC",
                      help="the metric of each trial's best epoch to optimise, e.g. val_accuracy, val_loss or "
                           "validation:accuracy (default: the search space's, else the monitored metric)")
    tune.add_argument("--direction", default="", help="maximize or minimize (default: the search space's, else "
                                                      "minimize for a loss, maximize otherwise)")
    tune.add_argument("--output", default=DEFAULT_TUNE_OUTPUT,
                      help=f"output folder (default: {DEFAULT_TUNE_OUTPUT})")
    tune.add_argument("--cache", action="store_true", help="reuse the outputs of unchanged steps of an earlier "
                                                           "search into the same --output (as kic run --cache)")
    tune.set_defaults(handler=_tune)


# ------------------------------------------------------------------- run
def _run(args: argparse.Namespace) -> int:
    from kic import parameters

    if args.list_params:
        for parameter in parameters.PIPELINE_PARAMETERS:
            default = "(required)" if parameter.required else repr(parameter.default)
            only = f"[only in {parameters.target_names(parameter.targets)}] " if parameter.targets else ""
            print(f"{parameter.name:30} {parameter.type.__name__:6} {default:26} {only}{parameter.help}")
        return 0

    from kic.orchestration import output_folder, shutdown

    output = os.path.abspath(args.output)
    with output_folder.locked(output, "kic run"), shutdown.stoppable_run():
        return _run_locked(args, output)


def _run_locked(args: argparse.Namespace, output: str) -> int:
    from kic import parameters

    started = time.perf_counter()
    layers, malformed = options.parameter_layers(args)
    layers = _with_demo_data(layers, output)
    from kic.orchestration import compile as kic_compile
    from kic.orchestration import local_run, output_folder, run_log

    try:  # every problem, in seconds, before any step starts
        values = parameters.resolve(*layers, target=kic_compile.LOCAL, note=note)
    except ParameterError as error:
        raise ParameterError(malformed + error.problems) from None
    if malformed:
        raise ParameterError(malformed)
    output_folder.refuse_foreign({**local_run.cleared_folders(output),
                                  os.path.join(output, LOGS_DIR): run_log.written_by_kic})

    values = _with_checkpoints(values, output, resume=args.resume)
    pipeline_yaml = kic_compile.compile_pipeline(os.path.join(output, kic_compile.PIPELINE_YAML), kic_compile.LOCAL)
    logs = os.path.join(output, LOGS_DIR)
    print(f"kic: running pipeline {pipeline_yaml} locally; outputs in {output}, each step's log in {logs}",
          flush=True)
    failure = None
    with run_log.RunLog(logs, verbose=args.verbose) as log:
        try:
            run = local_run.run_compiled_pipeline(pipeline_yaml, values, os.path.join(output, "runs"),
                                                  cache=args.cache or args.resume)
        except RuntimeError as error:  # a step failed
            failure = error
    if failure is not None:
        _print_failure(log, failure, output)
        return 1
    outputs = local_run.collect_outputs(run, output, prediction_format=values["batch_predict_format"])
    print_summary(outputs, output, time.perf_counter() - started)
    return 0


def _with_checkpoints(values: dict, output: str, *, resume: bool) -> dict:
    """``values`` with train's checkpoints in <output>/checkpoints unless
    checkpoint_uri names a folder. kfp.local gives every run new output
    folders, so the run-scoped default of a cluster would never be found
    again; this one is, by --resume, and emptied by a run without it, whose
    train must not pick up an earlier run's checkpoint."""
    if values["checkpoint_uri"]:
        return values
    checkpoints = os.path.join(output, artifacts.CHECKPOINTS_DIR)
    if resume:
        found = os.path.isdir(checkpoints) and os.listdir(checkpoints)
        print(f"kic: resuming: train continues from its checkpoint in {checkpoints}" if found else
              f"kic: resuming: no checkpoint in {checkpoints}; train starts from the beginning", flush=True)
    elif os.path.isdir(checkpoints):
        from kic import storage

        for name in os.listdir(checkpoints):  # kic's checkpoints only; a user's files there stay
            if name.startswith(artifacts.CHECKPOINT_PREFIX):
                storage.remove_tree(os.path.join(checkpoints, name))
        with contextlib.suppress(OSError):  # not empty: a user's files are in it
            os.rmdir(checkpoints)
    return {**values, "checkpoint_uri": checkpoints}


def _with_demo_data(layers: list[dict], output: str) -> list[dict]:
    """``layers``, with the built-in demo dataset (and settings that suit it) when they name no data source."""
    if any(layer.get("data_source") for layer in layers):
        return layers
    # The demo data is the default source, made first: the front door looks for it.
    from kic import demo_data

    demo_dir = os.path.join(output, "demo-data")
    demo_data.write_demo_dataset(demo_dir)
    print(f"kic: using the built-in demo dataset ({len(demo_data.CLASSES)} classes) at {demo_dir}")
    return [dict(DEMO_PARAMETERS), *layers, {"data_source": demo_dir}]


def _print_failure(log, error: RuntimeError, output: str) -> None:
    step = log.failed_step
    if step is None:
        print(f"\nkic: the pipeline failed: {error}", file=sys.stderr)
    else:
        print(f"\nkic: the pipeline failed in step {step.name}; its log is {step.log_path}. Its last lines:",
              file=sys.stderr)
        for line in log.last_lines(step):
            print(f"    {line}", file=sys.stderr)
    print(f"kic: every step's log is in {os.path.join(output, LOGS_DIR)}, its artifacts under "
          f"{os.path.join(output, 'runs')}", file=sys.stderr)


# ------------------------------------------------------------------ tune
def _tune(args: argparse.Namespace) -> int:
    from kic.orchestration import output_folder, shutdown

    output = os.path.abspath(args.output)
    with output_folder.locked(output, "kic tune"), shutdown.stoppable_run():
        return _tune_locked(args, output)


def _tune_locked(args: argparse.Namespace, output: str) -> int:
    from kic import parameters
    from kic.pipelines.placement import LOCAL
    from kic.tuning import settings as tuning_settings
    from kic.tuning import space as spaces

    started = time.perf_counter()
    found, document, payload = [], None, None
    try:
        payload = spaces.load_json(args.search_space)
        document, form = spaces.parse(payload)
        found += form
    except ParameterError as error:
        found += error.problems
    layers, malformed = options.parameter_layers(args)
    found += malformed
    if document and document.static_hyperparameters:
        # The reference job's fixed hyperparameters, under --hyperparameters and --param.
        layers.insert(0, dict(document.static_hyperparameters))
    layers = _with_demo_data(layers, output)
    values = None
    try:  # every problem, in seconds, before any step starts
        values = parameters.resolve(*layers, target=LOCAL, note=note)
    except ParameterError as error:
        found += error.problems
    parallelism = args.parallelism or (document.parallelism if document else 0) or 1
    settings = None
    if document:
        try:  # the search is checked even when other parameters are wrong: with those of theirs that are right
            settings = tuning_settings.resolve(document, values=values or _valid_values(layers),
                                               strategy=args.strategy, trials=args.trials,
                                               objective_metric=args.objective, objective_direction=args.direction,
                                               parallelism=parallelism)
        except ParameterError as error:
            found += error.problems
    if found:
        raise ParameterError(found)
    for line in settings.notes:
        print(f"kic: {line}")
    print(f"kic: {settings.strategy} search of {settings.trials} trials, {parallelism} at a time, for the "
          f"{settings.objective.direction[:3]}imum of {settings.objective.metric}")

    from kic.orchestration import compile as kic_compile
    from kic.orchestration import local_run, output_folder

    output_folder.refuse_foreign(local_run.cleared_folders(output))
    pipeline_yaml = kic_compile.compile_tuning_pipeline(
        os.path.join(output, kic_compile.TUNING_PIPELINE_YAML), kic_compile.LOCAL, parallelism=parallelism)
    arguments = {**values, "search_space": json.dumps(payload), "strategy": args.strategy, "trials": args.trials,
                 "objective_metric": args.objective, "objective_direction": args.direction}
    print(f"kic: running pipeline {pipeline_yaml} locally; outputs in {output}", flush=True)
    try:
        run = local_run.run_compiled_pipeline(pipeline_yaml, arguments, os.path.join(output, "runs"),
                                              cache=args.cache)
    except RuntimeError as error:  # a step failed; its own log above says why
        print(f"\nkic: the search failed: {error}\nkic: each step's artifacts are under "
              f"{os.path.join(output, 'runs')}", file=sys.stderr)
        return 1
    outputs = local_run.collect_tuning_outputs(run, output, prediction_format=values["batch_predict_format"])
    print_summary(outputs, output, time.perf_counter() - started, command="tune", extra=_tuning_summary(output))
    return 0


def _valid_values(layers: list[dict]) -> dict:
    """The defaults, and each value of ``layers`` that is valid on its own, typed."""
    from kic import parameters

    values = parameters.defaults()
    for layer in layers:
        for name, value in layer.items():
            try:
                values.update(parameters.validate({name: value}, reachability=False))
            except ParameterError:
                pass
    return values


def _tuning_summary(output: str) -> tuple[str, ...]:
    from kic.orchestration.local_run import TUNING_FILES

    with open(os.path.join(output, TUNING_FILES["trials"]), encoding="utf-8") as handle:
        document = json.load(handle)
    metric = document["objective"]["metric"]
    best = next(trial for trial in document["trials"] if trial["trial"] == document["best_trial"])
    return (f"trials:       {len(document['trials'])} ({document['succeeded']} succeeded, {document['failed']} "
            f"failed) in {os.path.join(output, TUNING_FILES['trials'])}",
            f"best trial:   {best['trial']}, {metric} {best['objective']:.4f}, with "
            + ", ".join(f"{name}={value}" for name, value in best["hyperparameters"].items()),
            f"best values:  {os.path.join(output, TUNING_FILES['best_hyperparameters'])} (kic run --hyperparameters)",
            f"tuning:       {os.path.join(output, TUNING_FILES['tuning_report'])}")
