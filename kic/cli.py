"""kic: run the pipeline locally, prepare, validate, predict, compile, list backbones.
compile, list backbones.

Every command checks its parameters through the one front door
(``kic.parameters``) before it does any work. Listing and validating import
neither TensorFlow nor KFP, so they answer in a second or two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kic.errors import ParameterError, UserError

DEFAULT_OUTPUT = "kic-output"
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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ParameterError as error:
        print(f"kic: {error}", file=sys.stderr)
        return 2
    except UserError as error:  # anything else keeps its traceback: it is a bug
        print(f"kic: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    from kic.data import images, prepare, splits
    from kic.serving import contract

    parser = argparse.ArgumentParser(prog="kic", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on this machine (KFP local runner)")
    run.add_argument("--data", default="", help="training images: folder, gs:// prefix, manifest or tfds:NAME; "
                                                "default: the built-in demo dataset")
    run.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="set any pipeline parameter, hyperparameters included (repeatable)")
    run.add_argument("--hyperparameters", default="", metavar="FILE.json",
                     help="the reference algorithm's hyperparameter JSON (values may be strings)")
    run.add_argument("--cache", action="store_true",
                     help="reuse the outputs of steps whose inputs are unchanged since an earlier run into the same "
                          "--output, as clusters do (changed images are noticed: the snapshot step is never cached)")
    run.add_argument("--verbose", action="store_true",
                     help="show everything the steps and KFP write (always in <output>/logs: run.log and one file per "
                          "step)")
    run.add_argument("--list-params", action="store_true", help="list the pipeline parameters and exit")
    run.set_defaults(handler=_run)

    compile_ = commands.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines (pipeline.yaml) and Vertex AI "
                        "(pipeline-vertex.yaml), and the component YAML files")
    compile_.add_argument("--target", choices=("kfp", "vertex"), default="",
                          help="only this target's pipeline (default: both, and the components)")
    compile_.add_argument("--output", default="", help="where the pipeline goes (default: pipeline.yaml for kfp, "
                                                       "pipeline-vertex.yaml for vertex); needs --target")
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
    compile_.add_argument("--gcs-credentials-secret", default="", metavar="NAME",
                          help="kfp: a Kubernetes secret holding a service-account key.json, mounted into every "
                               "step for gs:// access from a cluster outside Google Cloud")
    compile_.add_argument("--no-components", action="store_true", help="only write the pipeline")
    compile_.set_defaults(handler=_compile)

    prepare_ = commands.add_parser("prepare", help="only the prepare step: images -> validated TFRecord splits")
    prepare_.add_argument("source", help="folder, gs:// prefix, manifest (.csv/.jsonl) or tfds:NAME[:CONFIG]")
    prepare_.add_argument("output", help="output folder or gs:// prefix")
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
    predict.add_argument("model", help="package folder, SavedModel folder or model.tar.gz (local or gs://)")
    predict.add_argument("inputs", help="image folder, manifest or gs:// prefix")
    predict.add_argument("--output", default="predictions." + contract.PREDICTION_FORMATS[0],
                         help="output file; its extension (" + ", ".join(contract.PREDICTION_FORMATS)
                              + ") picks the format")
    predict.add_argument("--batch-size", type=int, default=contract.DEFAULT_PREDICTION_BATCH_SIZE)
    predict.add_argument("--top-k", type=int, default=contract.DEFAULT_TOP_K)
    predict.set_defaults(handler=_predict)
    return parser


# ------------------------------------------------------------------- run
def _run(args: argparse.Namespace) -> int:
    from kic import parameters
    from kic.config import read_json_object

    if args.list_params:
        for parameter in parameters.PIPELINE_PARAMETERS:
            default = "(required)" if parameter.required else repr(parameter.default)
            print(f"{parameter.name:30} {parameter.type.__name__:6} {default:26} {parameter.help}")
        return 0

    started = time.perf_counter()
    output = os.path.abspath(args.output)
    assigned, malformed = _assignments(args.param)
    data = args.data or assigned.get("data_source", "")
    layers: list[dict] = [] if data else [dict(DEMO_PARAMETERS)]
    if args.hyperparameters:  # only what the file sets: the rest keeps the layers below it
        layers.append(read_json_object(args.hyperparameters))
    layers.append(assigned)
    if data:
        layers.append({"data_source": data})
    else:
        # The demo data is the default source, made first: the check below looks for it.
        from kic import demo_data

        demo_dir = os.path.join(output, "demo-data")
        demo_data.write_demo_dataset(demo_dir)
        layers.append({"data_source": demo_dir})
        print(f"kic: using the built-in demo dataset ({len(demo_data.CLASSES)} classes) at {demo_dir}")
    try:  # every problem, in seconds, before any step starts
        values = parameters.resolve(*layers, note=_note)
    except ParameterError as error:
        raise ParameterError(malformed + error.problems) from None
    if malformed:
        raise ParameterError(malformed)

    from kic.orchestration import compile as kic_compile
    from kic.orchestration import local_run, run_log

    os.makedirs(output, exist_ok=True)
    pipeline_yaml = kic_compile.compile_pipeline(os.path.join(output, kic_compile.PIPELINE_YAML), kic_compile.LOCAL)
    logs = os.path.join(output, LOGS_DIR)
    print(f"kic: running pipeline {pipeline_yaml} locally; outputs in {output}, each step's log in {logs}",
          flush=True)
    failure = None
    with run_log.RunLog(logs, verbose=args.verbose) as log:
        try:
            run = local_run.run_compiled_pipeline(pipeline_yaml, values, os.path.join(output, "runs"),
                                                  cache=args.cache)
        except RuntimeError as error:  # a step failed
            failure = error
    if failure is not None:
        _print_failure(log, failure, output)
        return 1
    outputs = local_run.collect_outputs(run, output, prediction_format=values["batch_predict_format"])
    _print_summary(outputs, output, time.perf_counter() - started)
    return 0


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


def _print_summary(outputs, output: str, seconds: float) -> None:
    from kic.orchestration import local_run

    metrics = outputs.metrics
    headline = [name for name in ("accuracy", "top_5_accuracy", "precision", "recall", "auc", "prc", "log_loss")
                if name in metrics]
    print("\n" + "=" * 72)
    print(f"kic run finished in {seconds / 60:.1f} min")
    print("test metrics: " + ", ".join(f"{name} {metrics[name]:.4f}" for name in headline))
    if outputs.model:
        print(f"model:        {os.path.join(output, 'model.tar.gz')} (unpacked in {outputs.model})")
    else:
        print("model:        not exported: the quality gate did not bless it")
    for reason in (outputs.blessing or {}).get("reasons", []):
        print(f"gate:         {reason}")
    print(f"metrics:      {os.path.join(output, local_run.METRICS_JSON)}")
    if outputs.predictions:
        print(f"predictions:  {outputs.predictions}")
    print(f"reports:      {os.path.join(output, 'data_report.html')}, "
          f"{os.path.join(output, local_run.EVALUATION_REPORT_HTML)}")
    logs = os.path.join(output, LOGS_DIR)
    print(f"logs:         {logs} ({', '.join(sorted(os.listdir(logs)))})")
    print(f"all steps:    {outputs.run_dir}")
    print("=" * 72)


# --------------------------------------------------------------- prepare
def _prepare(args: argparse.Namespace) -> int:
    from kic import parameters
    from kic.data.prepare import DataQualityError, PrepareOptions, prepare_dataset

    parameters.validate({
        "data_source": args.source, "validation_source": args.validation_source, "test_source": args.test_source,
        "validation_fraction": args.validation_fraction, "test_fraction": args.test_fraction,
        "split_seed": args.seed, "image_short_side": args.image_short_side,
        "max_rejected_fraction": args.max_rejected_fraction, "tfds_data_dir": args.tfds_data_dir})
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
    kubernetes_options = dict(gpu_node_selector=selector, gpu_tolerations=tuple(tolerations),
                              gcs_credentials_secret=args.gcs_credentials_secret)
    targets = [args.target] if args.target else list(TARGETS)
    if any(kubernetes_options.values()) and targets != ["kfp"]:
        problems.append(Problem("--target", args.target or "(both)", "node selectors, tolerations and credential "
                                                                     "secrets are Kubernetes settings: --target kfp"))
    if problems:
        raise ParameterError(problems)
    from kic.orchestration import compile as kic_compile

    for target in targets:
        cluster = ClusterOptions(target=target, **(kubernetes_options if target == "kfp" else {}))
        path = args.output or kic_compile.PIPELINE_YAMLS[target]
        print(f"wrote {kic_compile.compile_pipeline(path, target, cluster)}")
    if not args.no_components:
        for path in kic_compile.compile_components():
            print(f"wrote {path}")
    return 0


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
    from kic.serving import contract

    extension = os.path.splitext(args.output)[1].lstrip(".").lower()
    output_format = extension if extension in contract.PREDICTION_FORMATS else contract.PREDICTION_FORMATS[0]
    parameters.validate({"batch_predict_source": args.inputs, "batch_predict_format": output_format,
                         "top_k": args.top_k})
    from kic.serving import predict

    summary = predict.predict(args.model, args.inputs, args.output, batch_size=args.batch_size, top_k=args.top_k,
                              output_format=output_format)
    print(predict.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
