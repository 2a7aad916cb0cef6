"""kic prepare, kic train and kic predict: one step of the pipeline on its
own, as its component runs it (kic.runtime.steps), without KFP."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile

from kic import artifacts
from kic.cli import options
from kic.cli.output import ProgressBar, note
from kic.errors import ParameterError


def add_commands(commands) -> None:
    from kic.data import images, prepare, splits
    from kic.runtime.steps import TRAIN_OUTPUTS
    from kic.serving import contract

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
                                              "model; what each worker of a multi-machine job runs",
                                formatter_class=_TrainHelp)
    train.add_argument("prepared", metavar="PREPARED_DIR", help="a folder (or gs:// or s3:// prefix) kic prepare wrote")
    train.add_argument("output", metavar="OUTPUT_DIR",
                       help=f"folder, gs:// or s3:// prefix for the model ({TRAIN_OUTPUTS['model']}/, as the train "
                            f"step's Model artifact), its best epoch's metrics ({TRAIN_OUTPUTS['metrics']}) and "
                            "checkpoints")
    options.add_param_options(train, "set any parameter of train, hyperparameters included (repeatable): "
                                     + _TrainHelp.PARAMETERS + " and the 25 hyperparameters")
    train.set_defaults(handler=_train, data="")  # no --data: the prepared folder is the data

    predict = commands.add_parser("predict", help="batch prediction with an exported model")
    predict.add_argument("model", help="package folder, SavedModel folder or model.tar.gz (local, gs:// or s3://)")
    predict.add_argument("inputs", help="image folder, manifest, gs:// or s3:// prefix")
    predict.add_argument("--output", default="predictions." + contract.PREDICTION_FORMATS[0],
                         help="output file; its extension (" + ", ".join(contract.PREDICTION_FORMATS)
                              + ") picks the format")
    predict.add_argument("--batch-size", type=int, default=contract.DEFAULT_PREDICTION_BATCH_SIZE)
    predict.add_argument("--top-k", type=int, default=contract.DEFAULT_TOP_K)
    predict.set_defaults(handler=_predict)


class _TrainHelp(argparse.HelpFormatter):
    """kic train's help, naming the parameters it takes (read off the step) only when it is shown: reading them
    imports the front door, which every other command's start would pay for."""

    PARAMETERS = "{train's parameters}"

    def _get_help_string(self, action: argparse.Action) -> str:
        from kic.runtime.steps import train_parameters

        return action.help.replace(self.PARAMETERS, ", ".join(train_parameters()))


# --------------------------------------------------------------- prepare
def _prepare(args: argparse.Namespace) -> int:
    from kic import parameters, storage
    from kic.orchestration import output_folder, shutdown

    parameters.validate({
        "data_source": args.source, "validation_source": args.validation_source, "test_source": args.test_source,
        "validation_fraction": args.validation_fraction, "test_fraction": args.test_fraction,
        "split_seed": args.seed, "image_short_side": args.image_short_side,
        "max_rejected_fraction": args.max_rejected_fraction, "tfds_data_dir": args.tfds_data_dir})
    if storage.is_remote(args.output):
        with shutdown.stoppable_run(step_in_process=True):
            return _prepare_unlocked(args)
    # Two prepares into one folder mix their shards.
    with output_folder.locked(args.output, "kic prepare"), shutdown.stoppable_run(step_in_process=True):
        return _prepare_unlocked(args)


def _prepare_unlocked(args: argparse.Namespace) -> int:
    from kic.data.prepare import DataQualityError, PrepareOptions, prepare_dataset

    prepare_options = PrepareOptions(
        source=args.source, output_dir=args.output, validation_source=args.validation_source,
        test_source=args.test_source, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, seed=args.seed, image_short_side=args.image_short_side,
        max_rejected_fraction=args.max_rejected_fraction, tfds_data_dir=args.tfds_data_dir, workers=args.workers)
    terminal = sys.stdout.isatty()
    try:
        result = prepare_dataset(prepare_options, progress=ProgressBar() if terminal else print,
                                 progress_interval=0.2 if terminal else 5.0)
    except DataQualityError as error:
        print(f"\nkic: {error}\nkic: the data report is in {args.output}", file=sys.stderr)
        return 1
    metrics = result.report["metrics"]
    print(f"\nprepared {result.info.num_classes} classes: {metrics['num_train']} train, "
          f"{metrics['num_validation']} validation, {metrics['num_test']} test; {metrics['num_rejected']} rejected, "
          f"{metrics['num_duplicates']} duplicates -> {args.output}")
    return 0


# ----------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    """The train step of the pipeline on a prepared folder, as the component
    runs it (kic.runtime.steps.train_step): the same checks, log lines
    and outputs. Every problem with the parameters or the folder is listed
    before any compute."""
    from kic import config, parameters, storage
    from kic.errors import Problem
    from kic.runtime.steps import train_parameters

    layers, found = options.parameter_layers(args)
    given: dict = {}
    for layer in layers:
        given.update(layer)
    values = {}
    try:
        values = parameters.validate(given, note=note)
    except ParameterError as error:
        found += error.problems
    train_takes = train_parameters()
    takes = set(train_takes) | set(parameters.HYPERPARAMETERS)
    canonical = {config.ALIASES.get(name, name): value for name, value in given.items()}
    found += [Problem(name, value, "not a parameter of train; it takes " + ", ".join(train_takes)
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
    from kic.orchestration import output_folder, shutdown

    # The workers of a multi-machine job (kic.training.distribution: TF_CONFIG, CLUSTER_SPEC; not imported, as
    # it imports TensorFlow noisily) share OUTPUT_DIR on purpose, only the chief writing; else one train at a
    # time, as two would take turns resuming from each other's checkpoints.
    shared = storage.is_remote(args.output) or any(os.environ.get(variable) for variable in
                                                ("TF_CONFIG", "CLUSTER_SPEC"))
    if not storage.is_remote(args.output):
        output_folder.check_not_a_file(args.output, "OUTPUT_DIR")
    lock = contextlib.nullcontext() if shared else output_folder.locked(args.output, "kic train")
    with lock, shutdown.stoppable_run(step_in_process=True):
        return _train_unlocked(args, values)


def _train_unlocked(args: argparse.Namespace, values: dict) -> int:
    from kic import storage
    from kic.runtime import steps

    outputs = steps.TRAIN_OUTPUTS
    # A gs:// or s3:// OUTPUT_DIR (several machines' shared output) is written here first and uploaded by the
    # chief at the end; checkpoints go straight to it, where every worker and a restarted pod find them.
    remote = storage.is_remote(args.output)
    local = tempfile.mkdtemp(prefix="kic-train-") if remote else args.output
    model = _LocalArtifact(os.path.join(local, outputs["model"]), uri=storage.join(args.output, outputs["model"]))
    metrics = _LocalArtifact(os.path.join(local, outputs["metrics"]))
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
    print(f"kic: model in {storage.join(args.output, outputs['model'])}, its best epoch's metrics in "
          f"{storage.join(args.output, outputs['metrics'])}")
    return 0


class _LocalArtifact:
    """A folder or file standing in for a KFP artifact, for a step run on its own."""

    def __init__(self, path: str, uri: str = ""):
        self.path, self.uri = path, uri or path
        self.metadata: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metadata[name] = value


# --------------------------------------------------------------- predict
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
    from kic.orchestration import shutdown
    from kic.serving import predict

    with shutdown.stoppable_run(step_in_process=True):
        summary = predict.predict(args.model, args.inputs, args.output, batch_size=args.batch_size,
                                  top_k=args.top_k, output_format=output_format)
    print(predict.format_summary(summary))
    return 0


def _same_file(first: str, second: str) -> bool:
    try:
        return "://" not in first + second and os.path.samefile(first, second)
    except OSError:  # one does not exist (yet)
        return False
