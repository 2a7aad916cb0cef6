"""The ``kic`` command: run the pipeline locally, compile it, list backbones, predict."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kic.config import ParameterError

DEFAULT_OUTPUT = "kic-output"

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
    except (FileNotFoundError, ValueError) as error:
        print(f"kic: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline on this machine (KFP local runner)")
    run.add_argument("--data", default="", help="training images: folder, gs:// prefix, manifest or tfds:NAME; "
                                                "default: the built-in demo dataset")
    run.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default: {DEFAULT_OUTPUT})")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="set any pipeline parameter, hyperparameters included (repeatable)")
    run.add_argument("--hyperparameters", default="", metavar="FILE.json",
                     help="the reference algorithm's hyperparameter JSON (values may be strings)")
    run.add_argument("--list-params", action="store_true", help="list the pipeline parameters and exit")
    run.set_defaults(handler=_run)

    compile_ = commands.add_parser("compile", help="compile pipeline.yaml and the component YAML files")
    compile_.add_argument("--output", default="pipeline.yaml")
    compile_.add_argument("--image", default="", help="container image of the components (default: the "
                                                      "released image for this version)")
    compile_.add_argument("--no-components", action="store_true", help="only write the pipeline")
    compile_.set_defaults(handler=_compile)

    prepare = commands.add_parser("prepare", help="only the prepare step: images -> validated TFRecord splits")
    prepare.add_argument("source", help="folder, gs:// prefix, manifest (.csv/.jsonl) or tfds:NAME[:CONFIG]")
    prepare.add_argument("output", help="output folder or gs:// prefix")
    prepare.add_argument("--validation-source", default="")
    prepare.add_argument("--test-source", default="")
    prepare.add_argument("--validation-fraction", type=float, default=0.2)
    prepare.add_argument("--test-fraction", type=float, default=0.1)
    prepare.add_argument("--seed", type=int, default=42)
    prepare.add_argument("--image-short-side", type=int, default=600)
    prepare.add_argument("--max-rejected-fraction", type=float, default=0.05)
    prepare.add_argument("--tfds-data-dir", default="")
    prepare.add_argument("--workers", type=int, default=0, help="0: all cores")
    prepare.set_defaults(handler=_prepare)

    backbones = commands.add_parser("backbones", help="list the supported backbones")
    backbones.set_defaults(handler=_backbones)

    validate = commands.add_parser("validate", help="check a hyperparameter JSON against the contract")
    validate.add_argument("hyperparameters", metavar="FILE.json")
    validate.set_defaults(handler=_validate)

    predict = commands.add_parser("predict", help="batch prediction with an exported model")
    predict.add_argument("model", help="package folder, SavedModel folder or model.tar.gz (local or gs://)")
    predict.add_argument("inputs", help="image folder, manifest or gs:// prefix")
    predict.add_argument("--output", default="predictions.jsonl", help="output file (.jsonl or .csv)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(handler=_predict)
    return parser


# ------------------------------------------------------------------- run
def _run(args: argparse.Namespace) -> int:
    from kic import compile as kic_compile
    from kic import demo_data, local_run, parameters
    from kic.config import from_reference_json

    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the steps inherit it: keep TensorFlow's C++ logs quiet
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    pipeline_yaml = kic_compile.compile_pipeline(os.path.join(output, kic_compile.PIPELINE_YAML))
    known = parameters.pipeline_parameters(pipeline_yaml)
    if args.list_params:
        for name, (type_name, default) in known.items():
            print(f"{name:32} {type_name:6} {default!r}")
        return 0

    layers: list[dict] = []
    if not args.data:
        layers.append(dict(DEMO_PARAMETERS))
    if args.hyperparameters:
        layers.append(from_reference_json(args.hyperparameters).to_dict())
    layers.append(parameters.parse_assignments(args.param))
    if args.data:
        layers.append({"data_source": args.data})
    else:
        layers.append({"data_source": "(built-in demo data)"})
    values = parameters.resolve(known, *layers)  # every problem, in seconds, before any heavy work
    if args.data and not args.data.startswith(("gs://", "tfds:")) and not os.path.exists(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    if not args.data:
        demo_dir = os.path.join(output, "demo-data")
        demo_data.write_demo_dataset(demo_dir)
        values["data_source"] = demo_dir
        print(f"kic: using the built-in demo dataset ({len(demo_data.CLASSES)} classes) at {demo_dir}")

    print(f"kic: running pipeline {pipeline_yaml} locally; outputs in {output}", flush=True)
    try:
        run_dir = local_run.run_compiled_pipeline(pipeline_yaml, values, os.path.join(output, "runs"))
    except RuntimeError as error:  # a step failed; its own log above says why
        print(f"\nkic: the pipeline failed: {error}\nkic: each step's artifacts are under "
              f"{os.path.join(output, 'runs')}", file=sys.stderr)
        return 1
    summary = local_run.collect_outputs(run_dir, output)
    _print_summary(summary, output, time.perf_counter() - started)
    return 0


def _print_summary(summary: dict, output: str, seconds: float) -> None:
    metrics = summary["metrics"]
    headline = [name for name in ("accuracy", "top_5_accuracy", "precision", "recall", "auc", "prc", "log_loss")
                if name in metrics]
    print("\n" + "=" * 72)
    print(f"kic run finished in {seconds / 60:.1f} min")
    print("test metrics: " + ", ".join(f"{name} {metrics[name]:.4f}" for name in headline))
    blessing = summary["blessing"] or {}
    if summary["model"]:
        print(f"model:        {os.path.join(output, 'model.tar.gz')} (unpacked in {summary['model']})")
    else:
        print("model:        not exported: the quality gate did not bless it")
    for reason in blessing.get("reasons", []):
        print(f"gate:         {reason}")
    print(f"metrics:      {os.path.join(output, 'metrics.json')}")
    if summary.get("predictions"):
        print(f"predictions:  {summary['predictions']}")
    print(f"reports:      {os.path.join(output, 'data_report.html')}, "
          f"{os.path.join(output, 'evaluation_report.html')}")
    print(f"all steps:    {summary['run_dir']}")
    print("=" * 72)


# --------------------------------------------------------------- prepare
def _prepare(args: argparse.Namespace) -> int:
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


# --------------------------------------------------------------- others
def _compile(args: argparse.Namespace) -> int:
    if args.image:
        os.environ["KIC_IMAGE"] = args.image  # read when the components are imported, just below
    from kic import compile as kic_compile

    print(f"wrote {kic_compile.compile_pipeline(args.output)}")
    if not args.no_components:
        for path in kic_compile.compile_components():
            print(f"wrote {path}")
    return 0


def _backbones(_args: argparse.Namespace) -> int:
    from kic.model import backbones

    print(backbones.format_registry())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kic.config import from_reference_json

    config = from_reference_json(args.hyperparameters)
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from kic import predict

    summary = predict.predict(args.model, args.inputs, args.output, batch_size=args.batch_size, top_k=args.top_k)
    print(predict.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
