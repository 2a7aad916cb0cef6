"""kic: run the pipeline locally or on a cluster, schedule it, search hyperparameters, prepare,
validate, predict, compile, list backbones.

Every command checks its parameters through the one front door
(``kic.parameters``) before it does any work. Listing and validating import
neither TensorFlow nor KFP, so they answer in a second or two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

from kic import artifacts
from kic.errors import ParameterError, UserError

DEFAULT_OUTPUT = "kic-output"
DEFAULT_TUNE_OUTPUT = "kic-tune-output"
LOGS_DIR = "logs"  # under the output folder: run.log and <step>.log

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


def main(argv: list[str] | None = None) -> int:
    from kic import redact

    parser = _parser()
    args = parser.parse_args(argv)
    credentialed = args.handler in (_submit, _schedule)
    if not credentialed:
        return _handle(args)
    redact.remember(args.token, args.cookies, _read_quietly(args.token_file),
                    urls=(args.host, os.environ.get("KF_PIPELINES_ENDPOINT", "")))
    # Whatever a library prints, and a bug's traceback, pass through redaction too.
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = redact.RedactingStream(sys.stdout), redact.RedactingStream(sys.stderr)
    try:
        return _handle(args)
    except Exception:  # a bug: its traceback, redacted
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        redact.forget()


def _handle(args: argparse.Namespace) -> int:
    from kic.redact import redact

    try:
        return args.handler(args)
    except ParameterError as error:
        print(redact(f"kic: {error}"), file=sys.stderr)
        return 2
    except UserError as error:  # anything else keeps its traceback: it is a bug
        print(redact(f"kic: error: {error}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM in a local run (kic.orchestration.shutdown)
        from kic.orchestration import shutdown

        print(f"\nkic: stopped by {shutdown.signal_name()}"
              + ("; so were the steps it had started" if shutdown.received else ""), file=sys.stderr)
        return shutdown.exit_code()


def _parser() -> argparse.ArgumentParser:
    from kic.data import images, prepare, splits
    from kic.serving import contract

    parser = argparse.ArgumentParser(prog="kic", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on this machine (KFP local runner)")
    _add_parameter_options(run, data_help="training images: folder, gs:// or s3:// prefix, manifest or tfds:NAME; "
                                          "default: the built-in demo dataset")
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
    _add_parameter_options(tune, data_help="training images: folder, gs:// or s3:// prefix, manifest or tfds:NAME; "
                                           "default: the built-in demo dataset")
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

    cluster_data_help = ("training images: gs:// or s3:// prefix, manifest or tfds:NAME (a path is read inside the "
                         "pipeline's containers)")
    submit = commands.add_parser("submit", help="run the pipeline once on Kubeflow Pipelines or Vertex AI")
    _add_parameter_options(submit, data_help=cluster_data_help)
    submit.add_argument("--name", default="", help="the run's display name (default: the pipeline's name and "
                                                   "the time)")
    _add_target_options(submit)
    submit.set_defaults(handler=_submit)

    schedule = commands.add_parser("schedule", help="run the pipeline on a cron schedule on Kubeflow Pipelines or "
                                                    "Vertex AI (one run at a time, no catch-up)")
    schedule.add_argument("--cron", required=True, metavar="EXPR",
                          help="Kubeflow Pipelines: 6 fields, seconds first ('0 0 3 * * *': daily at 03:00); "
                               "Vertex AI: 5 fields, optionally after TZ=AREA/CITY ('TZ=Europe/Amsterdam 0 3 * * *')")
    _add_parameter_options(schedule, data_help=cluster_data_help)
    schedule.add_argument("--name", default="", help="the schedule's display name (default: the pipeline's name "
                                                     "and the cron)")
    _add_target_options(schedule)
    schedule.set_defaults(handler=_schedule)

    compile_ = commands.add_parser(
        "compile", help="compile the training and tuning pipelines for Kubeflow Pipelines (pipeline.yaml, "
                        "tuning-pipeline.yaml) and Vertex AI (pipeline-vertex.yaml, tuning-pipeline-vertex.yaml), "
                        "and the component YAML files")
    compile_.add_argument("--target", choices=("kfp", "vertex"), default="",
                          help="only this target's pipelines (default: both, and the components); vertex needs "
                               "the optional extra: pip install kic[vertex]")
    compile_.add_argument("--output", default="", help="where the pipeline goes (default: pipeline.yaml for kfp, "
                                                       "pipeline-vertex.yaml for vertex); needs --target, and "
                                                       "writes only the training pipeline unless --tuning")
    compile_.add_argument("--tuning", action="store_true", help="with --output: the tuning pipeline")
    compile_.add_argument("--parallelism", type=int, default=0, metavar="P",
                          help="how many trials the tuning pipeline runs at once (default: 4)")
    compile_.add_argument("--image-cpu", default="", help="image of every step but train (default: "
                                                          "ghcr.io/kic-project/kic-cpu:<version>)")
    compile_.add_argument("--image-gpu", default="", help="image of train (default: "
                                                          "ghcr.io/kic-project/kic-gpu:<version>)")
    compile_.add_argument("--image", default="", help="one image for every step (--image-cpu/--image-gpu win)")
    compile_.add_argument("--gpu-node-selector", action="append", default=[], metavar="KEY=VALUE",
                          help="kfp: a node label train's pod must match (a GPU node pool), e.g. "
                               "cloud.google.com/gke-accelerator=nvidia-l4 (repeatable)")
    compile_.add_argument("--gpu-toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                          help="kfp: a taint train's pod tolerates, e.g. nvidia.com/gpu=present:NoSchedule "
                               "(repeatable)")
    compile_.add_argument("--no-step-timeouts", action="store_true",
                          help="kfp: no pod deadlines for prepare (6 h) and train (72 h): Kubeflow Pipelines 2.0.x "
                               "fails a step that has one")
    compile_.add_argument("--gcs-credentials-secret", default="", metavar="NAME",
                          help="kfp: a Kubernetes secret holding a service-account key.json, mounted into every "
                               "step for gs:// access from a cluster outside Google Cloud")
    compile_.add_argument("--s3-credentials-secret", default="", metavar="NAME",
                          help="kfp: a Kubernetes secret holding an S3 access key pair, set as every step's "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3:// access; Kubeflow Pipelines' "
                               "own MinIO: mlpipeline-minio-artifact (with --s3-endpoint "
                               "http://minio-service.kubeflow:9000), which also gives train checkpoints under the "
                               "default MinIO pipeline root")
    compile_.add_argument("--s3-secret-keys", default="accesskey,secretkey", metavar="ACCESS_KEY,SECRET_KEY",
                          help="kfp: the names of the access key id's and the secret key's entries in "
                               "--s3-credentials-secret (default: accesskey,secretkey, as in Kubeflow Pipelines' "
                               "MinIO secret)")
    compile_.add_argument("--s3-endpoint", default="", metavar="URL",
                          help="kfp: every step's AWS_ENDPOINT_URL_S3, the S3 API of MinIO or another S3-compatible "
                               "store (default: AWS's own)")
    machines = compile_.add_argument_group(
        "train's machines, compiled into the pipeline (what each platform honours; kic submit compiles what "
        "--param sets)")
    machines.add_argument("--accelerator-count", type=int, default=None, metavar="N",
                          help="GPUs of train and of each tuning trial (default: 1; 0: the CPU)")
    machines.add_argument("--accelerator-type", default=None, metavar="TYPE",
                          help="needs --target: kfp the extended resource (default: nvidia.com/gpu), vertex an "
                               "accelerator type (default: NVIDIA_L4)")
    machines.add_argument("--train-replicas", type=int, default=None, metavar="M",
                          help="vertex: machines of train's CustomJob (default: 1)")
    machines.add_argument("--train-machine-type", default=None, metavar="TYPE",
                          help="vertex: their machine type (default: the smallest that carries the GPUs)")
    machines.add_argument("--train-machines-at-run-time", action="store_true",
                          help="vertex: accelerator_type, accelerator_count, train_replica_count and "
                               "train_machine_type as run parameters instead, through a step that computes the "
                               "CustomJob's worker pools at run time (unverified on Vertex AI)")
    compile_.add_argument("--no-components", action="store_true", help="only write the pipeline")
    compile_.set_defaults(handler=_compile)

    prepare_ = commands.add_parser("prepare", help="only the prepare step: images -> validated TFRecord splits")
    prepare_.add_argument("source", help="folder, gs:// or s3:// prefix, manifest (.csv/.jsonl) or tfds:NAME[:CONFIG]")
    prepare_.add_argument("output", help="output folder, gs:// or s3:// prefix")
    prepare_.add_argument("--validation-source", default="")
    prepare_.add_argument("--test-source", default="")
    prepare_.add_argument("--validation-fraction", type=float, default=splits.DEFAULT_VALIDATION_FRACTION)
    prepare_.add_argument("--test-fraction", type=float, default=splits.DEFAULT_TEST_FRACTION)
    prepare_.add_argument("--seed", type=int, default=splits.DEFAULT_SEED)
    prepare_.add_argument("--image-short-side", type=int, default=images.DEFAULT_SHORT_SIDE)
    prepare_.add_argument("--max-rejected-fraction", type=float, default=prepare.DEFAULT_MAX_REJECTED_FRACTION)
    prepare_.add_argument("--tfds-data-dir", default="")
    prepare_.add_argument("--workers", type=int, default=0, help="0: all cores")
    prepare_.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="only the train step: a prepared dataset (kic prepare's output) -> a "
                                              "model; what each worker of a multi-machine job runs")
    train.add_argument("prepared", metavar="PREPARED_DIR", help="a folder (or gs:// or s3:// prefix) kic prepare wrote")
    train.add_argument("output", metavar="OUTPUT_DIR",
                       help=f"folder, gs:// or s3:// prefix for the model ({TRAIN_OUTPUTS['model']}/, as the train "
                            f"step's Model artifact), its best epoch's metrics ({TRAIN_OUTPUTS['metrics']}) and "
                            "checkpoints")
    _add_param_options(train, "set any parameter of train, hyperparameters included (repeatable): "
                              + ", ".join(TRAIN_PARAMETERS) + " and the 25 hyperparameters")
    train.set_defaults(handler=_train, data="")  # no --data: the prepared folder is the data

    backbones = commands.add_parser("backbones", help="list the supported backbones")
    backbones.set_defaults(handler=_backbones)

    validate = commands.add_parser("validate", help="check a JSON file of hyperparameters (the reference "
                                                    "algorithm's format) or of any pipeline parameters")
    validate.add_argument("hyperparameters", metavar="FILE.json")
    validate.add_argument("--check-uris", action="store_true",
                          help="also look up the sources, models and weights the file names (where the pipeline "
                               "runs is where this matters; ImageNet weights are asked of Keras)")
    validate.set_defaults(handler=_validate)

    predict = commands.add_parser("predict", help="batch prediction with an exported model")
    predict.add_argument("model", help="package folder, SavedModel folder or model.tar.gz (local, gs:// or s3://)")
    predict.add_argument("inputs", help="image folder, manifest, gs:// or s3:// prefix")
    predict.add_argument("--output", default="predictions." + contract.PREDICTION_FORMATS[0],
                         help="output file; its extension (" + ", ".join(contract.PREDICTION_FORMATS)
                              + ") picks the format")
    predict.add_argument("--batch-size", type=int, default=contract.DEFAULT_PREDICTION_BATCH_SIZE)
    predict.add_argument("--top-k", type=int, default=contract.DEFAULT_TOP_K)
    predict.set_defaults(handler=_predict)
    return parser


def _add_parameter_options(parser: argparse.ArgumentParser, *, data_help: str) -> None:
    """--data, --param and --hyperparameters: the pipeline parameters, the same for run, submit and schedule."""
    parser.add_argument("--data", default="", help=data_help)
    _add_param_options(parser, "set any pipeline parameter, hyperparameters included (repeatable)")


def _add_param_options(parser: argparse.ArgumentParser, param_help: str) -> None:
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=param_help)
    parser.add_argument("--hyperparameters", default="", metavar="FILE.json",
                        help="the reference algorithm's hyperparameter JSON (values may be strings)")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    both = parser.add_argument_group("either platform")
    both.add_argument("--pipeline", default="", metavar="FILE",
                      help="a compiled pipeline to send (default: compile one for the platform now)")
    both.add_argument("--dry-run", action="store_true",
                      help="check what can be checked from here (parameters, credentials, the backend's release, "
                           "the bucket, the images), print each item's status, and send nothing")
    both.add_argument("--no-image-check", action="store_true",
                      help="send without asking the registries whether the pipeline's images exist (for "
                           "registries this machine cannot reach)")
    both.add_argument("--pipeline-root", default="", metavar="URI",
                      help="where the runs' artifacts go (Vertex AI: required, gs://; Kubeflow Pipelines: default "
                           "the deployment's)")
    both.add_argument("--service-account", default="",
                      help="the account the run acts as (Kubernetes on Kubeflow Pipelines, Google Cloud on Vertex AI)")
    both.add_argument("--token", default="", help="a bearer token (Vertex AI: an OAuth access token, e.g. "
                                                  "$(gcloud auth print-access-token); default: application default "
                                                  "credentials)")
    kfp = parser.add_argument_group("Kubeflow Pipelines (the default platform)")
    kfp.add_argument("--host", default="", metavar="URL", help="the API's URL (default: $KF_PIPELINES_ENDPOINT)")
    kfp.add_argument("--namespace", default="", help="the profile namespace of a multi-user deployment")
    kfp.add_argument("--experiment", default="", help="the experiment (default: $KF_PIPELINES_DEFAULT_EXPERIMENT_NAME "
                                                      "or Default)")
    kfp.add_argument("--token-file", default="", metavar="FILE",
                     help="a file holding the bearer token, re-read on each request (a projected service-account "
                          "token)")
    kfp.add_argument("--cookies", default="", help="a Cookie header for the deployment's auth proxy, e.g. "
                                                   "'authservice_session=...'")
    vertex = parser.add_argument_group("Vertex AI (pip install 'kic[vertex]')")
    vertex.add_argument("--vertex", action="store_true", help="send to Vertex AI Pipelines")
    vertex.add_argument("--project", default="", help="the Google Cloud project")
    vertex.add_argument("--region", default="", help="the Vertex AI region, e.g. us-central1")
    vertex.add_argument("--api-endpoint", default="", metavar="HOST",
                        help="the Vertex AI API endpoint (default: REGION-aiplatform.googleapis.com)")


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
    layers, malformed = _parameter_layers(args)
    layers = _with_demo_data(layers, output)
    from kic.orchestration import compile as kic_compile
    from kic.orchestration import local_run, output_folder, run_log

    try:  # every problem, in seconds, before any step starts
        values = parameters.resolve(*layers, target=kic_compile.LOCAL, note=_note)
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
    _print_summary(outputs, output, time.perf_counter() - started)
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
            if name.startswith(CHECKPOINT_PREFIX):
                storage.remove_tree(os.path.join(checkpoints, name))
        with contextlib.suppress(OSError):  # not empty: a user's files are in it
            os.rmdir(checkpoints)
    return {**values, "checkpoint_uri": checkpoints}


CHECKPOINT_PREFIX = "ckpt-"  # kic.training.checkpoints.PREFIX, which imports Keras


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


def _parameter_layers(args: argparse.Namespace) -> tuple[list[dict], list]:
    """The pipeline parameters that --hyperparameters, --param and --data set,
    as layers over the defaults (lowest first, for ``parameters.resolve``),
    and a problem for each malformed --param."""
    from kic.config import read_json_object

    assigned, malformed = _assignments(args.param)
    layers = []
    if args.hyperparameters:  # only what the file sets: the rest keeps the layers below it
        layers.append(read_json_object(args.hyperparameters))
    layers.append(assigned)
    if args.data:
        layers.append({"data_source": args.data})
    return layers, malformed


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


def _note(message: str) -> None:
    print(f"kic: note: {message}", file=sys.stderr)


def _assignments(assignments: list[str]) -> tuple[dict[str, str], list]:
    """``--param NAME=VALUE`` options as a dict, and a problem for each malformed one."""
    from kic.errors import Problem

    values, problems = {}, []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            problems.append(Problem("--param", assignment, "expected NAME=VALUE"))
            continue
        values[name.strip()] = value
    return values, problems


def _print_summary(outputs, output: str, seconds: float, command: str = "run", extra: tuple[str, ...] = ()) -> None:
    from kic.orchestration import local_run

    metrics = outputs.metrics
    headline = [name for name in ("accuracy", "top_5_accuracy", "precision", "recall", "auc", "prc", "log_loss")
                if name in metrics]
    print("\n" + "=" * 72)
    print(f"kic {command} finished in {seconds / 60:.1f} min")
    print("test metrics: " + ", ".join(f"{name} {metrics[name]:.4f}" for name in headline))
    if outputs.model:
        print(f"model:        {os.path.join(output, 'model.tar.gz')} (unpacked in {outputs.model})")
    else:
        # The run succeeded: a blocked model is a verdict, not a failure; LATEST stays where it was.
        print("model:        " + (outputs.blessing or {}).get("summary", "not exported: the quality gate did not "
                                                                          "bless it"))
        print(f"              (why, in full: {os.path.join(output, local_run.EVALUATION_REPORT_HTML)})")
    for reason in (outputs.blessing or {}).get("reasons", []):
        print(f"gate:         {reason}")
    print(f"metrics:      {os.path.join(output, local_run.METRICS_JSON)}")
    if outputs.predictions:
        print(f"predictions:  {outputs.predictions}")
    print(f"reports:      {os.path.join(output, 'data_report.html')}, "
          f"{os.path.join(output, local_run.EVALUATION_REPORT_HTML)}")
    for line in extra:
        print(line)
    logs = os.path.join(output, LOGS_DIR)
    if os.path.isdir(logs):
        print(f"logs:         {logs} ({', '.join(sorted(os.listdir(logs)))})")
    print(f"all steps:    {outputs.run_dir}")
    print("=" * 72)


# ------------------------------------------------------------------ tune
def _tune(args: argparse.Namespace) -> int:
    from kic.orchestration import output_folder, shutdown

    output = os.path.abspath(args.output)
    with output_folder.locked(output, "kic tune"), shutdown.stoppable_run():
        return _tune_locked(args, output)


def _tune_locked(args: argparse.Namespace, output: str) -> int:
    from kic import parameters
    from kic.orchestration.placement import LOCAL
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
    layers, malformed = _parameter_layers(args)
    found += malformed
    if document and document.static_hyperparameters:
        # The reference job's fixed hyperparameters, under --hyperparameters and --param.
        layers.insert(0, dict(document.static_hyperparameters))
    layers = _with_demo_data(layers, output)
    values = None
    try:  # every problem, in seconds, before any step starts
        values = parameters.resolve(*layers, target=LOCAL, note=_note)
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
    for note in settings.notes:
        print(f"kic: {note}")
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
    _print_summary(outputs, output, time.perf_counter() - started, command="tune", extra=_tuning_summary(output))
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


# ------------------------------------------------------ submit, schedule
def _submit(args: argparse.Namespace) -> int:
    from kic.orchestration import remote

    target, misplaced = _target(args)
    layers, malformed = _parameter_layers(args)
    if args.dry_run:
        return _dry_run(target, layers, malformed + misplaced, args)
    print(f"kic: checking the parameters, the platform and the images, then sending the pipeline to "
          f"{target.platform}", flush=True)
    run = remote.submit(target, layers, problems=malformed + misplaced, pipeline=args.pipeline, name=args.name,
                        warn=_warn, check_images=not args.no_image_check)
    print(f"kic: started run {run.id} on {target.platform}\n{run.url}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from kic.orchestration import remote

    target, misplaced = _target(args)
    layers, malformed = _parameter_layers(args)
    if args.dry_run:
        return _dry_run(target, layers, malformed + misplaced, args, cron_expression=args.cron)
    print(f"kic: checking the parameters, the platform and the images, then sending the schedule to "
          f"{target.platform}", flush=True)
    schedule = remote.schedule(target, layers, args.cron, problems=malformed + misplaced, pipeline=args.pipeline,
                               name=args.name, warn=_warn, check_images=not args.no_image_check)
    print(f"kic: created schedule {schedule.id} on {target.platform}: {' '.join(args.cron.split())!r}, at most one "
          f"run at a time, missed runs skipped\n{schedule.url}")
    return 0


def _dry_run(target, layers, problems, args: argparse.Namespace, cron_expression: str | None = None) -> int:
    """Prints every check and its status; 1 when one failed. Nothing is sent."""
    from kic.orchestration import preflight, remote

    print(f"kic: checking what a run on {target.platform} needs, sending nothing", flush=True)
    checks = remote.dry_run(target, layers, problems=problems, pipeline=args.pipeline,
                            cron_expression=cron_expression, warn=_warn, check_images=not args.no_image_check)
    for check in checks:
        print(check.line())
    failed = preflight.failures(checks)
    print(f"kic: {len(failed)} of {len(checks)} checks failed; nothing was sent" if failed else
          f"kic: nothing failed of what can be checked from here ({len(checks)} checks); nothing was sent")
    return 1 if failed else 0


_KUBEFLOW_ONLY = ("host", "namespace", "experiment", "token_file", "cookies")
_VERTEX_ONLY = ("project", "region", "api_endpoint")


def _target(args: argparse.Namespace):
    """The platform the options name, and a problem for each option of the other platform."""
    from kic.errors import Problem
    from kic.orchestration.kubeflow import KubeflowTarget
    from kic.orchestration.vertex import VertexTarget

    def misplaced(names: tuple[str, ...], platform: str) -> list[Problem]:
        return [Problem("--" + name.replace("_", "-"), getattr(args, name), f"only for {platform}")
                for name in names if getattr(args, name)]

    both = {"pipeline_root": args.pipeline_root, "service_account": args.service_account, "token": args.token}
    if args.vertex:
        return (VertexTarget(project=args.project, region=args.region, api_endpoint=args.api_endpoint, **both),
                misplaced(_KUBEFLOW_ONLY, "Kubeflow Pipelines"))
    return (KubeflowTarget(host=args.host, namespace=args.namespace, experiment=args.experiment,
                           token_file=args.token_file, cookies=args.cookies, **both),
            misplaced(_VERTEX_ONLY, "Vertex AI (--vertex)"))


def _warn(message: str) -> None:
    from kic.redact import redact

    print(redact(f"kic: warning: {message}"), file=sys.stderr, flush=True)


def _read_quietly(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):  # no file given, or none there: kic submit says so in its checks
        return ""


# --------------------------------------------------------------- prepare
def _prepare(args: argparse.Namespace) -> int:
    from kic import parameters, storage
    from kic.orchestration import output_folder

    parameters.validate({
        "data_source": args.source, "validation_source": args.validation_source, "test_source": args.test_source,
        "validation_fraction": args.validation_fraction, "test_fraction": args.test_fraction,
        "split_seed": args.seed, "image_short_side": args.image_short_side,
        "max_rejected_fraction": args.max_rejected_fraction, "tfds_data_dir": args.tfds_data_dir})
    if storage.is_remote(args.output):
        return _prepare_unlocked(args)
    with output_folder.locked(args.output, "kic prepare"):  # two prepares into one folder mix their shards
        return _prepare_unlocked(args)


def _prepare_unlocked(args: argparse.Namespace) -> int:
    from kic.data.prepare import DataQualityError, PrepareOptions, prepare_dataset

    options = PrepareOptions(
        source=args.source, output_dir=args.output, validation_source=args.validation_source,
        test_source=args.test_source, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, seed=args.seed, image_short_side=args.image_short_side,
        max_rejected_fraction=args.max_rejected_fraction, tfds_data_dir=args.tfds_data_dir, workers=args.workers)
    terminal = sys.stdout.isatty()
    try:
        result = prepare_dataset(options, progress=ProgressBar() if terminal else print,
                                 progress_interval=0.2 if terminal else 5.0)
    except DataQualityError as error:
        print(f"\nkic: {error}\nkic: the data report is in {args.output}", file=sys.stderr)
        return 1
    metrics = result.report["metrics"]
    print(f"\nprepared {result.info.num_classes} classes: {metrics['num_train']} train, "
          f"{metrics['num_validation']} validation, {metrics['num_test']} test; {metrics['num_rejected']} rejected, "
          f"{metrics['num_duplicates']} duplicates -> {args.output}")
    return 0


class ProgressBar:
    """Draws prepare's "N/M images" progress as one bar that redraws in place."""

    WIDTH = 30

    def __call__(self, message: str) -> None:
        counts = message.split(" ", 2)[1] if message.count("/") and " images " in message else ""
        done, _, total = counts.partition("/")
        if done.isdigit() and total.isdigit() and int(total):
            filled = self.WIDTH * int(done) // int(total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            print(f"\r[{bar}] {message.removeprefix('prepare: ')}", end="", flush=True)
            if done == total:
                print()
        else:
            print(message, flush=True)


# ----------------------------------------------------------------- train
# The pipeline parameters train takes besides the hyperparameters (accelerator_count: the GPUs it must see).
TRAIN_PARAMETERS = ("backbone", "pretrained_weights", "image_size", "base_model_uri", "seed", "accelerator_count",
                    "tf_data_service", "precision", "jit_compile", "checkpoint_uri", "checkpoint_every_steps")
TRAIN_OUTPUTS = {"model": "model", "metrics": "training_metrics.json"}


def _train(args: argparse.Namespace) -> int:
    """The train step of the pipeline on a prepared folder, as the component
    runs it (kic.orchestration.steps.train_step): the same checks, log lines
    and outputs. Every problem with the parameters or the folder is listed
    before any compute."""
    from kic import config, parameters, storage
    from kic.errors import Problem

    layers, found = _parameter_layers(args)
    given: dict = {}
    for layer in layers:
        given.update(layer)
    values = {}
    try:
        values = parameters.validate(given, note=_note)
    except ParameterError as error:
        found += error.problems
    takes = set(TRAIN_PARAMETERS) | set(parameters.HYPERPARAMETERS)
    canonical = {config.ALIASES.get(name, name): value for name, value in given.items()}
    found += [Problem(name, value, "not a parameter of train; it takes " + ", ".join(TRAIN_PARAMETERS)
                                   + " and the hyperparameters") for name, value in canonical.items()
              if name in parameters.PARAMETERS_BY_NAME and name not in takes]
    try:
        prepared = storage.exists(storage.join(args.prepared, artifacts.DATASET_INFO))
    except storage.StorageError as error:
        found.append(Problem("PREPARED_DIR", args.prepared, f"cannot be read: {error}"))
    else:
        if not prepared:
            found.append(Problem("PREPARED_DIR", args.prepared, "a folder (or gs:// or s3:// prefix) kic prepare "
                                                                f"wrote, with {artifacts.DATASET_INFO}"))
    if found:
        raise ParameterError(found)
    values = {**{name: parameters.PARAMETERS_BY_NAME[name].default for name in takes}, **values}
    from kic.orchestration import output_folder

    # The workers of a multi-machine job (kic.training.distribution: TF_CONFIG, CLUSTER_SPEC; not imported, as
    # it imports TensorFlow noisily) share OUTPUT_DIR on purpose, only the chief writing; else one train at a
    # time, as two would take turns resuming from each other's checkpoints.
    shared = storage.is_remote(args.output) or any(os.environ.get(variable) for variable in
                                                ("TF_CONFIG", "CLUSTER_SPEC"))
    if not storage.is_remote(args.output):
        output_folder.check_not_a_file(args.output, "OUTPUT_DIR")
    with contextlib.nullcontext() if shared else output_folder.locked(args.output, "kic train"):
        return _train_unlocked(args, values)


def _train_unlocked(args: argparse.Namespace, values: dict) -> int:
    from kic import storage
    from kic.orchestration import steps

    # A gs:// or s3:// OUTPUT_DIR (several machines' shared output) is written here first and uploaded by the
    # chief at the end; checkpoints go straight to it, where every worker and a restarted pod find them.
    remote = storage.is_remote(args.output)
    local = tempfile.mkdtemp(prefix="kic-train-") if remote else args.output
    model = _LocalArtifact(os.path.join(local, TRAIN_OUTPUTS["model"]),
                           uri=storage.join(args.output, TRAIN_OUTPUTS["model"]))
    metrics = _LocalArtifact(os.path.join(local, TRAIN_OUTPUTS["metrics"]))
    os.makedirs(local, exist_ok=True)
    # TensorFlow reads TFRecords from gs:// itself, not from s3:// (TF 2.20 dropped its S3 file system).
    prepared = storage.local_copy(args.prepared) if storage.is_s3(args.prepared) else contextlib.nullcontext(
        args.prepared)
    try:
        with prepared as examples:
            steps.train_step(examples=_LocalArtifact(examples), model=model, training_metrics=metrics,
                             required_gpus=values.pop("accelerator_count"), base_model_fingerprint="", **values)
        if not os.path.exists(metrics.path):  # one of several workers: only the chief writes
            return 0
        if remote:
            storage.upload_dir(local, args.output)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    print(f"kic: model in {storage.join(args.output, TRAIN_OUTPUTS['model'])}, its best epoch's metrics in "
          f"{storage.join(args.output, TRAIN_OUTPUTS['metrics'])}")
    return 0


class _LocalArtifact:
    """A folder or file standing in for a KFP artifact, for a step run on its own."""

    def __init__(self, path: str, uri: str = ""):
        self.path, self.uri = path, uri or path
        self.metadata: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metadata[name] = value


# --------------------------------------------------------------- others
def _compile(args: argparse.Namespace) -> int:
    from kic.errors import Problem
    from kic.orchestration.placement import TARGETS, ClusterOptions, Toleration

    # Read when the components are imported, in compile_pipeline below.
    images = {"KIC_IMAGE_CPU": args.image_cpu or args.image, "KIC_IMAGE_GPU": args.image_gpu or args.image}
    for variable, image in images.items():
        if image:
            os.environ[variable] = image
    problems = []
    if args.output and not args.target:
        problems.append(Problem("--output", args.output, "needs --target: one pipeline per file"))
    if args.tuning and not args.output:
        problems.append(Problem("--tuning", True, "only with --output (without it, both pipelines are written)"))
    if args.parallelism < 0:
        problems.append(Problem("--parallelism", args.parallelism, "1 or more trials at once"))
    selector = {}
    for pair in args.gpu_node_selector:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            problems.append(Problem("--gpu-node-selector", pair, "expected KEY=VALUE"))
        selector[key] = value
    tolerations = []
    for text in args.gpu_toleration:
        try:
            tolerations.append(Toleration.parse(text))
        except ValueError as error:
            problems.append(Problem("--gpu-toleration", text, str(error)))
    s3_secret_keys = tuple(key.strip() for key in args.s3_secret_keys.split(","))
    if len(s3_secret_keys) != 2 or not all(s3_secret_keys):
        problems.append(Problem("--s3-secret-keys", args.s3_secret_keys, "ACCESS_KEY,SECRET_KEY: two entry names"))
    if args.s3_endpoint and not args.s3_endpoint.startswith(("http://", "https://")):
        problems.append(Problem("--s3-endpoint", args.s3_endpoint, "a URL, as in http://minio-service.kubeflow:9000"))
    kubernetes_options = dict(gpu_node_selector=selector, gpu_tolerations=tuple(tolerations),
                              gcs_credentials_secret=args.gcs_credentials_secret,
                              s3_credentials_secret=args.s3_credentials_secret, s3_endpoint=args.s3_endpoint,
                              **({"s3_secret_keys": s3_secret_keys} if len(s3_secret_keys) == 2 else {}),
                              step_timeouts=not args.no_step_timeouts)
    targets = [args.target] if args.target else list(TARGETS)
    if (selector or tolerations or args.gcs_credentials_secret or args.s3_credentials_secret or args.s3_endpoint
            or args.no_step_timeouts) and targets != ["kfp"]:
        problems.append(Problem("--target", args.target or "(both)", "node selectors, tolerations, credential "
                                                                     "secrets and step timeouts are Kubernetes "
                                                                     "settings: --target kfp"))
    machine_options = _compiled_machines(args, targets, problems)
    if problems:
        raise ParameterError(problems)
    from kic.orchestration import compile as kic_compile

    for target in targets:  # nothing is written when a target cannot be compiled here
        kic_compile.require(target)
    clusters = {target: ClusterOptions(target=target, **(kubernetes_options if target == "kfp" else {}),
                                       **machine_options.get(target, {}))
                for target in targets}  # every value checked before anything is written
    for target in targets:
        cluster = clusters[target]
        if not (args.output and args.tuning):
            path = args.output or kic_compile.PIPELINE_YAMLS[target]
            print(f"wrote {kic_compile.compile_pipeline(path, target, cluster)}")
        if args.tuning or not args.output:
            path = args.output or kic_compile.TUNING_PIPELINE_YAMLS[target]
            print(f"wrote {kic_compile.compile_tuning_pipeline(path, target, cluster, args.parallelism or None)}")
    if not args.no_components:
        for path in kic_compile.compile_components():
            print(f"wrote {path}")
    return 0


def _compiled_machines(args: argparse.Namespace, targets: list[str], problems: list) -> dict[str, dict]:
    """kic compile's options for train's machines, as ClusterOptions fields per target; what does not fit the
    targets is added to ``problems``."""
    from kic.errors import Problem

    vertex_only = {"--train-replicas": args.train_replicas, "--train-machine-type": args.train_machine_type,
                   "--train-machines-at-run-time": args.train_machines_at_run_time or None}
    for flag, value in vertex_only.items():
        if value is not None and targets != ["vertex"]:
            problems.append(Problem(flag, value, "train's CustomJob is Vertex AI's: needs --target vertex"))
    if args.accelerator_type is not None and len(targets) != 1:
        problems.append(Problem("--accelerator-type", args.accelerator_type, "each platform names GPUs its own "
                                                                            "way: needs --target"))
    fields = {"accelerator_type": args.accelerator_type, "accelerator_count": args.accelerator_count}
    if args.train_machines_at_run_time and any(value is not None for value in
                                               (*fields.values(), args.train_replicas, args.train_machine_type)):
        problems.append(Problem("--train-machines-at-run-time", True, "train's machines are then run parameters: "
                                                                      "no other option of train's machines"))
    vertex = {**fields, "train_replica_count": args.train_replicas, "train_machine_type": args.train_machine_type,
              "train_machines_at_run_time": args.train_machines_at_run_time}
    options = {"kfp": fields, "vertex": vertex}
    return {target: {name: value for name, value in options[target].items() if value is not None and value is not False}
            for target in targets}


def _backbones(_args: argparse.Namespace) -> int:
    from kic.model import backbones

    print(backbones.format_registry())
    return 0


def _validate(args: argparse.Namespace) -> int:
    """The reference's hyperparameter JSON, or a JSON object of any pipeline
    parameters; prints the hyperparameters (defaults filled in) and the other
    parameters given, typed. Values and their combinations are checked; URIs
    only with --check-uris, since whether they can be reached depends on
    where the pipeline will run."""
    from kic import parameters
    from kic.config import TrainingConfig, read_json_object

    typed = parameters.validate(read_json_object(args.hyperparameters), reachability=args.check_uris, note=_note)
    hyperparameters = TrainingConfig.from_dict({name: value for name, value in typed.items()
                                                if name in parameters.HYPERPARAMETERS})
    others = {name: value for name, value in typed.items() if name not in parameters.HYPERPARAMETERS}
    print(json.dumps({**hyperparameters.to_dict(), **others}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from kic import parameters
    from kic.errors import Problem
    from kic.serving import contract

    extension = os.path.splitext(args.output)[1].lstrip(".").lower()
    output_format = extension if extension in contract.PREDICTION_FORMATS else contract.PREDICTION_FORMATS[0]
    found = []
    if extension not in contract.PREDICTION_FORMATS:  # as JSONL under any name, it would be read as something else
        found.append(Problem("--output", args.output, "a file whose extension picks the format: "
                                                      + ", ".join(f".{name}" for name in contract.PREDICTION_FORMATS)))
    elif _same_file(args.output, args.inputs):
        found.append(Problem("--output", args.output, "is the inputs' manifest: predictions never overwrite an input"))
    try:
        parameters.validate({"batch_predict_source": args.inputs, "batch_predict_format": output_format,
                             "top_k": args.top_k})
    except ParameterError as error:
        found += error.problems
    if found:
        raise ParameterError(found)
    from kic.serving import predict

    summary = predict.predict(args.model, args.inputs, args.output, batch_size=args.batch_size, top_k=args.top_k,
                              output_format=output_format)
    print(predict.format_summary(summary))
    return 0


def _same_file(first: str, second: str) -> bool:
    try:
        return "://" not in first + second and os.path.samefile(first, second)
    except OSError:  # one does not exist (yet)
        return False


if __name__ == "__main__":
    sys.exit(main())
