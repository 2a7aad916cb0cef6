"""Every pipeline parameter, and the one front door that validates them.

``PIPELINE_PARAMETERS`` names each parameter with its type, default and help;
the pipeline's signature is generated from it. ``validate`` (typed values) and
``resolve`` (defaults plus overrides given as strings) check any set of them
and raise one ``ParameterError`` listing every problem. The validate
component, ``kic run`` and every other ``kic`` command check through here, so a
bad value fails in seconds, before any step reads data.

The rules themselves live with what they are about (the hyperparameter
contract, the backbone registry, the split fractions, the quality gate, the
serving contract); this module decides which apply to which parameters. It
needs neither KFP nor TensorFlow, with one exception: whether ImageNet weights
can be had is asked of Keras (see ``kic.model.weights``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from kic import artifacts, config, storage, vertex_machines
from kic.data import manifest, prepare, splits
from kic.data.sources import TFDS_PREFIX, tfds_problem
from kic.errors import ParameterError, Problem
from kic.evaluation import baseline, gate
from kic.model import backbone_registry, model_info, weights
from kic.serving import contract, registry

__all__ = ["PIPELINE_PARAMETERS", "Parameter", "ParameterError", "Problem", "defaults", "derive_short_side",
           "for_target", "problems", "resolve", "validate"]


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    type: type  # str, int, float or bool
    default: Any  # None when required; what `kic run` (on this machine) uses
    help: str
    # Where a compiled cluster target ("kfp", "vertex") defaults otherwise: the GPU of train.
    target_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The only pipelines ("kfp", "vertex", "local": `kic run`) that have it; empty: every one.
    targets: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is None

    def default_for(self, target: str) -> Any:
        return self.target_defaults.get(target, self.default)

    def belongs_to(self, target: str) -> bool:
        """Whether the pipeline compiled for ``target`` has it ("": any pipeline)."""
        return not self.targets or not target or target in self.targets


def _hyperparameters() -> tuple[Parameter, ...]:
    help_texts = config.descriptions()
    types = {"bool": bool, "int": int, "float": float, "str": str}
    return tuple(Parameter(field.name, types[field.type], field.default, help_texts[field.name])
                 for field in dataclasses.fields(config.TrainingConfig))


KUBERNETES_GPU = "nvidia.com/gpu"  # the extended resource name NVIDIA's device plugin registers
VERTEX_DEFAULT_GPU = "NVIDIA_L4"

PIPELINE_PARAMETERS: tuple[Parameter, ...] = (
    # --- prepare
    Parameter("data_source", str, None,
              "Training images: a local folder or gs:// prefix laid out as <root>/<class>/<file>, a manifest "
              "(.csv with uri,label columns, or .jsonl), or tfds:NAME[:CONFIG]."),
    Parameter("validation_source", str, "", "Optional separate validation images (same kinds of source); empty: "
                                            "validation_fraction of each class is held out."),
    Parameter("test_source", str, "", "Optional separate test images; empty: test_fraction of each class is "
                                      "held out."),
    Parameter("validation_fraction", float, splits.DEFAULT_VALIDATION_FRACTION,
              "Share of each class held out for validation when there is no validation_source."),
    Parameter("test_fraction", float, splits.DEFAULT_TEST_FRACTION,
              "Share of each class held out for testing when there is no test_source (0: no test split)."),
    Parameter("split_seed", int, splits.DEFAULT_SEED, "Seed of the split; the same seed and images always give "
                                                      "the same splits."),
    Parameter("image_short_side", int, 0, "prepare downscales images so their short side is at most this many "
                                          "pixels; 0: the model's input size, so that training "
                                          "decodes small images."),
    Parameter("tfds_data_dir", str, "", "Folder of an already prepared TFDS copy, for tfds: sources."),
    Parameter("max_rejected_fraction", float, prepare.DEFAULT_MAX_REJECTED_FRACTION,
              "prepare fails (after writing its report) when a larger share of files is rejected."),
    # --- train
    Parameter("backbone", str, backbone_registry.DEFAULT_BACKBONE,
              "Backbone name (`kic backbones`) or a reference-algorithm model_id."),
    Parameter("pretrained_weights", str, weights.DEFAULT,
              "imagenet (Keras' download and cache), none (from scratch), or the path or gs:// URI of a "
              ".weights.h5 file for the backbone."),
    Parameter("image_size", int, 0, "Input size in pixels; 0: the backbone's native size."),
    Parameter("base_model_uri", str, "", "An earlier kic model (folder or model.tar.gz, local or gs://) to "
                                         "continue training from (incremental training)."),
    Parameter("seed", int, config.DEFAULT_SEED, "Seed of initialisation, shuffling and augmentation; makes a "
                                                "CPU run repeatable."),
    Parameter("accelerator_type", str, "",
              "The GPU train asks for: nvidia.com/gpu on Kubeflow Pipelines; on Vertex AI an accelerator type such as "
              "NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_A100_80GB or NVIDIA_H100_80GB. Empty (with accelerator_count 0) "
              "on this machine. On a cluster it is compiled into the pipeline (kic compile --accelerator-type; kic "
              "submit compiles what --param sets).",
              target_defaults={"kfp": KUBERNETES_GPU, "vertex": VERTEX_DEFAULT_GPU}),
    Parameter("accelerator_count", int, 0,
              "Number of GPUs train asks for; with 1 or more, train fails at once when it sees none (0: whatever "
              "the machine has). On a cluster it is compiled into the pipeline, 1 by default (kic compile "
              "--accelerator-count; kic submit compiles what --param sets).",
              target_defaults={"kfp": 1, "vertex": 1}),
    # --- train as a Vertex AI custom job (pipeline-vertex.yaml only)
    Parameter("train_replica_count", int, 1,
              "Machines train runs on, each with accelerator_count GPUs of accelerator_type: 2 or more train one "
              "model across them (MultiWorkerMirroredStrategy; batch_size stays the global batch). Compiled into "
              "the pipeline (kic compile --train-replicas; kic submit compiles what --param sets).",
              targets=("vertex",)),
    Parameter("train_machine_type", str, "",
              "The machine type of each of train's machines, which must carry the GPUs asked for (NVIDIA_L4: "
              "g2-standard-*, NVIDIA_TESLA_A100: a2-highgpu-<N>g, NVIDIA_H100_80GB: a3-highgpu-<N>g, "
              "NVIDIA_TESLA_T4: n1-*); empty: the smallest that does (g2-standard-8 for one NVIDIA_L4). Compiled "
              "into the pipeline (kic compile --train-machine-type).",
              targets=("vertex",)),
    Parameter("tf_data_service", str, "",
              "Address of a tf.data service dispatcher (grpc://HOST:PORT) whose workers decode and augment train's "
              "images, for when train's own CPUs cannot feed its GPUs; empty: train's own CPUs."),
    Parameter("precision", str, config.PRECISIONS[0],
              "Numeric precision of training: auto (mixed_bfloat16 on GPUs of compute capability 8.0 and later, "
              "mixed_float16 with loss scaling on older GPUs, float32 on CPUs), float32, mixed_float16 or "
              "mixed_bfloat16. The logits layer and the loss stay in float32."),
    Parameter("jit_compile", str, config.JIT_COMPILE_CHOICES[0],
              "XLA compilation of the training step: auto (on with one GPU), true or false. Off whenever "
              "training runs on several replicas (Keras 3 cannot compile a distributed step)."),
    Parameter("checkpoint_uri", str, "",
              "Folder (local or gs://) where train keeps its checkpoint, and resumes from one of the same settings "
              "and data found there; empty: a folder of this run's train task under the pipeline root (a retry of "
              "the task resumes, a new run starts afresh; `kic run`: <output>/checkpoints, resumed with --resume)."),
    Parameter("checkpoint_every_steps", int, config.DEFAULT_CHECKPOINT_EVERY_STEPS,
              "train also checkpoints every this many steps within an epoch (0: only at each epoch's end)."),
    # --- evaluate
    Parameter("gate_metric", str, "", "Metric of the quality gate; empty: the monitored metric (accuracy, or "
                                      "eval_metric in binary mode)."),
    Parameter("gate_minimum", float, 0.0, "Smallest acceptable gate_metric (the largest, for log_loss and "
                                          "false positive/negative counts)."),
    Parameter("baseline_model_uri", str, "",
              "The model the new one must not be worse than, evaluated on this run's test images: empty, the one "
              "export_uri/LATEST names (the model served now; none on the first run); a model (folder or "
              f"model.tar.gz); or {baseline.NONE} (no comparison). A blocked model is not exported and LATEST "
              "stays; the run succeeds."),
    Parameter("max_regression", float, gate.DEFAULT_MAX_REGRESSION,
              "Largest allowed shortfall of gate_metric against the baseline's, in the metric's units (a count for "
              "false_positives/false_negatives). The default 0.01 is about one standard error of accuracy on a "
              "1,000-image test split, the run-to-run noise of retraining, rather than a real regression."),
    Parameter("allow_removed_classes", bool, False,
              "Bless a model although classes of its baseline are missing from the data (they are compared on "
              "the classes both know); false: a vanished class blocks the export."),
    # --- export and batch prediction
    Parameter("export_uri", str, "", "Optional local path or gs:// URI that also receives the exported package "
                                     "(a _SUCCESS marker is written last)."),
    Parameter("tflite", str, "", "Also export TFLite: " + ", ".join(contract.TFLITE_QUANTIZATIONS)
              + "; empty: none."),
    Parameter("serving_skew_action", str, contract.SKEW_ACTIONS[0],
              "What export does when the pixels the served model computes from the test split's original files "
              "differ systematically from those evaluation computed from the prepared records (a decoder that "
              "differs from training's): block (fail the export) or warn (log it and export)."),
    Parameter("top_k", int, contract.DEFAULT_TOP_K, "k of the top-k metrics and of the labels the serving "
                                                    "signature and batch prediction return."),
    Parameter("batch_predict_source", str, "", "Optional images (folder, manifest or gs:// prefix) to predict "
                                               "with the exported model; empty: no batch prediction."),
    Parameter("batch_predict_format", str, contract.PREDICTION_FORMATS[0],
              "Format of the batch predictions: " + ", ".join(contract.PREDICTION_FORMATS) + "."),
    # --- Vertex AI Model Registry (pipeline-vertex.yaml only)
    Parameter("vertex_model_display_name", str, "",
              "After export, upload the SavedModel to the Vertex AI Model Registry under this display "
              "name, with vertex_serving_image to serve it; empty: no upload.", targets=("vertex",)),
    Parameter("vertex_parent_model", str, "",
              "Upload as a new version of this model (" + registry.MODEL_RESOURCE_FORM + ", in the "
              "pipeline's region); empty: a new model.", targets=("vertex",)),
    Parameter("vertex_serving_image", str, registry.VERTEX_SERVING_IMAGE,
              "The prediction container of the uploaded model; the default is Vertex AI's newest "
              "prebuilt TensorFlow CPU container (tf2-gpu.2-15 for a GPU).", targets=("vertex",)),
    # --- the 25 hyperparameters of the reference algorithm
    *_hyperparameters(),
)
# Train's Vertex AI custom job: the training pipeline's only (the tuning pipeline's trials are plain tasks).
CUSTOM_JOB_PARAMETERS = ("train_replica_count", "train_machine_type")
# Train's machines. On a cluster they are part of the compiled pipeline (`kic compile` options, or what `kic
# submit` compiles for its run), not run parameters, because that is what both platforms honour: Kubeflow
# Pipelines backends before 2.4 read only literal accelerator fields, and 2.4 and later resolve a placeholder
# there by the run value's string form, so an integer count resolves to "" and the pod gets no GPU; Vertex AI
# documents a CustomJob's worker pools as the compile-time values of GCPC's wrapper. `kic run` keeps them as
# run parameters (kfp.local places nothing), and so does a Vertex AI pipeline compiled with
# --train-machines-at-run-time.
TRAIN_MACHINE_PARAMETERS = ("accelerator_type", "accelerator_count", *CUSTOM_JOB_PARAMETERS)
CLUSTER_TARGETS = ("kfp", "vertex")
# The parameters that name files, folders or URIs.
LOCATIONS = ("data_source", "validation_source", "test_source", "tfds_data_dir", "pretrained_weights",
             "base_model_uri", "baseline_model_uri", "export_uri", "batch_predict_source")
PARAMETERS_BY_NAME: Mapping[str, Parameter] = {parameter.name: parameter for parameter in PIPELINE_PARAMETERS}
HYPERPARAMETERS = config.TrainingConfig.field_names()


def defaults(target: str = "") -> dict[str, Any]:
    """Every parameter's default: on this machine, or in a compiled target ("kfp", "vertex")."""
    return {parameter.name: parameter.default_for(target) for parameter in PIPELINE_PARAMETERS}


TARGET_NAMES = {"kfp": "the Kubeflow Pipelines pipeline", "vertex": "the Vertex AI pipeline",
                "local": "`kic run`"}


def target_names(targets: tuple[str, ...]) -> str:
    return " and ".join(TARGET_NAMES.get(target, target) for target in targets)


def for_target(target: str, *, train_machines_at_run_time: bool = False) -> tuple[Parameter, ...]:
    """The run parameters of the pipeline compiled for ``target`` ("kfp", "vertex", "local"): on a
    cluster, train's machines are fixed at compile time (``TRAIN_MACHINE_PARAMETERS``) unless
    ``train_machines_at_run_time``."""
    fixed = target in CLUSTER_TARGETS and not train_machines_at_run_time
    return tuple(parameter for parameter in PIPELINE_PARAMETERS
                 if parameter.belongs_to(target) and not (fixed and parameter.name in TRAIN_MACHINE_PARAMETERS))


# --------------------------------------------------------------------------- the front door


Reachability = bool | Callable[[str], bool]


def resolve(*layers: Mapping[str, Any], reachability: Reachability = True, target: str = "",
            note: config.Note | None = None) -> dict[str, Any]:
    """Every pipeline parameter's value: the defaults, then each layer over
    the one before (values may be strings, as command lines and the
    reference's JSON give them; the reference's aliases are accepted; the
    keys SageMaker adds are dropped, and ``note`` told so), typed and
    validated. With ``target`` ("kfp", "vertex", "local"), that
    pipeline's parameters with its defaults: setting another is a problem.
    Raises ParameterError with every problem."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({config.ALIASES.get(name, name): value for name, value in layer.items()})
    # A value of the wrong type is left out of the rules below.
    values, found = _typed(config.without_sagemaker_keys(merged, note))
    found += [Problem(name, values[name], f"only {target_names(PARAMETERS_BY_NAME[name].targets)} has this "
                                          f"parameter, not {target_names((target,))}")
              for name in values if not PARAMETERS_BY_NAME[name].belongs_to(target)]
    values = {**defaults(target), **values}
    found += problems(values, reachability=reachability)
    if found:
        raise ParameterError(found)
    return {name: value for name, value in values.items() if PARAMETERS_BY_NAME[name].belongs_to(target)}


def validate(values: Mapping[str, Any], *, reachability: Reachability = True,
             note: config.Note | None = None) -> dict[str, Any]:
    """Checks any subset of the pipeline parameters (values may be strings;
    the reference's aliases are accepted; the keys SageMaker adds are
    dropped, and ``note`` told so) and returns them typed; raises
    ParameterError with every problem."""
    values = config.without_sagemaker_keys(values, note)
    typed, found = _typed({config.ALIASES.get(name, name): value for name, value in values.items()})
    found += problems(typed, reachability=reachability)
    if found:
        raise ParameterError(found)
    return typed


def problems(values: Mapping[str, Any], *, reachability: Reachability = True) -> list[Problem]:
    """Every problem with ``values``, a subset of the pipeline parameters.
    Each rule runs when one of its parameters is given (the others take their
    defaults); with ``reachability`` off, URIs and weights are checked for
    form, not looked up. ``reachability`` may also be a function that says
    which URIs (or weights choices) to look up: ``kic submit`` looks up the
    gs:// URIs this machine can read, and leaves the rest to the cluster."""
    unknown = [name for name in values if name not in PARAMETERS_BY_NAME]
    found = [Problem(name, values[name], _unknown_hint(name)) for name in unknown]
    given = set(values) - set(unknown)
    merged = {**defaults(), **{name: values[name] for name in given}}
    for names, rule in _RULES:
        if given.intersection(names):
            found.extend(rule(merged, reachability))
    return found


def derive_short_side(*, backbone: str, image_size: int, requested: int) -> int:
    """The short side prepare stores: ``requested`` when set, else the
    model's input size, so each training epoch decodes the smallest JPEG that
    holds every pixel the model sees (training resizes to the input size
    before it augments: no margin above it is used). Measured on 500x375
    photos, 8/7 of 224 made a first training epoch ~11% dearer in CPU; what
    it bought is that the stored JPEG's own error reached the model smoothed
    by a second resize: on that the model's inputs from a served raw file
    and from its prepared record differ by 0.61 pixel levels on average,
    0.71 without (benchmarks/bench_parity.py)."""
    if requested > 0:
        return requested
    return image_size or backbone_registry.resolve(backbone).input_size


# --------------------------------------------------------------------------- the rules

Values = Mapping[str, Any]
_RULES: list[tuple[tuple[str, ...], Callable[[Values, Reachability], list[Problem]]]] = []


def _rule(*names: str):
    def register(function: Callable[[Values, Reachability], list[Problem]]):
        _RULES.append((names, function))
        return function
    return register


@_rule(*HYPERPARAMETERS)
def _hyperparameter_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    try:
        config.TrainingConfig.from_dict({name: values[name] for name in HYPERPARAMETERS})
    except ParameterError as error:
        return error.problems
    return []


# NumPy's, Python's and TensorFlow's seeding all take an unsigned 32-bit integer: a larger or negative seed
# passes the type check and then fails train after prepare has run.
SEED_MAX = 2**32 - 1
# No backbone is trained above 600 px (EfficientNet-B7); a batch of 32 at 2048 px already needs more than any
# one accelerator's memory, so a larger image_size is a typo, found here rather than as an out-of-memory in train.
MAX_IMAGE_SIZE = 2048


@_rule("seed", "split_seed")
def _seed_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    return [Problem(name, values[name], f"an integer from 0 to {SEED_MAX} (2**32 - 1: what the random number "
                                        "generators take)")
            for name in ("seed", "split_seed") if not 0 <= values[name] <= SEED_MAX]


@_rule("backbone", "image_size", "pretrained_weights")
def _model_rules(values: Values, reachability: Reachability) -> list[Problem]:
    if not 0 <= values["image_size"] <= MAX_IMAGE_SIZE:
        return [Problem("image_size", values["image_size"],
                        f"0 (the backbone's native size) or a positive int up to {MAX_IMAGE_SIZE} (backbones are "
                        "trained at up to 600 px; larger inputs do not fit a batch in accelerator memory)")]
    try:
        backbone = backbone_registry.resolve(values["backbone"])
    except ParameterError as error:
        return error.problems
    found = backbone_registry.image_size_problems(backbone, values["image_size"])
    if not found:
        found += weights.problems(values["pretrained_weights"], backbone, values["image_size"],
                                  reachability=_looks_up(reachability, values["pretrained_weights"]))
    return found


@_rule("image_short_side")
def _short_side_rule(values: Values, _reachability: Reachability) -> list[Problem]:
    if values["image_short_side"] < 0:
        return [Problem("image_short_side", values["image_short_side"],
                        "0 (derived from the model's input size) or a positive number of pixels")]
    return []


@_rule("data_source", "validation_source", "test_source", "tfds_data_dir")
def _source_rules(values: Values, reachability: Reachability) -> list[Problem]:
    found = []
    if not values["data_source"]:
        found.append(Problem("data_source", values["data_source"], "required: the training images"))
    for name in ("data_source", "validation_source", "test_source"):
        found += _source_problems(name, values[name], reachability, values["tfds_data_dir"])
    tfds_data_dir = values["tfds_data_dir"]
    if tfds_data_dir and _looks_up(reachability, tfds_data_dir):
        found += _folder_problems("tfds_data_dir", tfds_data_dir)
    return found


@_rule("validation_fraction", "test_fraction", "validation_source", "test_source", "max_rejected_fraction")
def _split_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    return (splits.fraction_problems(validation_fraction=values["validation_fraction"],
                                     test_fraction=values["test_fraction"],
                                     validation_source=values["validation_source"],
                                     test_source=values["test_source"])
            + prepare.rejected_fraction_problems(values["max_rejected_fraction"]))


@_rule("base_model_uri")
def _model_uri_rules(values: Values, reachability: Reachability) -> list[Problem]:
    uri = values["base_model_uri"]
    if not uri or not _looks_up(reachability, uri):
        return []
    marker = uri if uri.endswith(model_info.TARBALL_SUFFIXES) else storage.join(uri, artifacts.MODEL_INFO)
    try:
        if not storage.exists(marker):
            return [Problem("base_model_uri", uri, "not a kic model: expected a train output or export folder "
                                                   f"(with {artifacts.MODEL_INFO}) or a {artifacts.MODEL_TARBALL}")]
        # There, but perhaps not something train can continue from (the reference's SavedModel-only package).
        reason = model_info.continuation_problem(uri)
    except storage.StorageError as error:
        return [Problem("base_model_uri", uri, f"cannot be read: {error}")]
    return [Problem("base_model_uri", uri, reason)] if reason else []


@_rule("baseline_model_uri", "export_uri")
def _baseline_rules(values: Values, reachability: Reachability) -> list[Problem]:
    uri = values["baseline_model_uri"] or values["export_uri"]
    return baseline.problems(values["baseline_model_uri"], values["export_uri"],
                             look_up=bool(uri) and _looks_up(reachability, uri))


@_rule("reinitialize_top_layer", "base_model_uri")
def _top_layer_rule(values: Values, _reachability: Reachability) -> list[Problem]:
    if values["reinitialize_top_layer"] == "False" and not values["base_model_uri"]:
        # train's own check (kic.model.classifier.plan_head) would only say so after prepare.
        return [Problem("reinitialize_top_layer", "False",
                        "False keeps the earlier model's top layer, so it needs base_model_uri (a pretrained "
                        "backbone has no top layer to keep); use Auto or True, or set base_model_uri")]
    return []


@_rule("tf_data_service")
def _data_service_rule(values: Values, _reachability: Reachability) -> list[Problem]:
    address = values["tf_data_service"]
    if address and not re.fullmatch(r"(grpc://)?[A-Za-z0-9._-]+:\d{1,5}", address):
        return [Problem("tf_data_service", address, "a dispatcher address, grpc://HOST:PORT (or HOST:PORT)")]
    return []


@_rule("precision", "jit_compile")
def _precision_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    found = []
    if values["precision"] not in config.PRECISIONS:
        found.append(Problem("precision", values["precision"], "one of " + ", ".join(config.PRECISIONS)))
    if values["jit_compile"] not in config.JIT_COMPILE_CHOICES:
        found.append(Problem("jit_compile", values["jit_compile"], "one of " + ", ".join(config.JIT_COMPILE_CHOICES)))
    return found


@_rule("checkpoint_uri", "checkpoint_every_steps")
def _checkpoint_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    found, uri = [], values["checkpoint_uri"]
    if values["checkpoint_every_steps"] < 0:
        found.append(Problem("checkpoint_every_steps", values["checkpoint_every_steps"],
                             "0 (at epoch ends only) or a positive number of steps"))
    if storage.is_remote(uri) and not uri[len(storage.scheme(uri)):].strip("/"):
        found.append(Problem("checkpoint_uri", uri, f"a {storage.scheme(uri)}BUCKET/PATH URI"))
    elif "://" in uri and not storage.is_remote(uri):
        found.append(Problem("checkpoint_uri", uri, "a local folder, a gs://, s3:// or minio:// URI"))
    return found


@_rule("accelerator_type", "accelerator_count")
def _accelerator_rules(values: Values, _reachability: bool) -> list[Problem]:
    kind, count = values["accelerator_type"], values["accelerator_count"]
    if count < 0:
        return [Problem("accelerator_count", count, "0 (no GPU asked for) or more")]
    if count and not (kind == KUBERNETES_GPU or kind.startswith(vertex_machines.VERTEX_GPU_PREFIX)):
        return [Problem("accelerator_type", kind, f"a GPU: {KUBERNETES_GPU} on Kubeflow Pipelines, or a Vertex AI "
                                                  f"accelerator type starting with {vertex_machines.VERTEX_GPU_PREFIX} "
                                                  "(such as NVIDIA_L4); TensorFlow here runs on NVIDIA GPUs")]
    return []


@_rule("train_replica_count", "train_machine_type", "accelerator_type", "accelerator_count")
def _custom_job_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    return vertex_machines.problems(replica_count=values["train_replica_count"],
                                    machine_type=values["train_machine_type"],
                                    accelerator_type=values["accelerator_type"],
                                    accelerator_count=values["accelerator_count"])


@_rule("vertex_model_display_name", "vertex_parent_model", "vertex_serving_image")
def _model_registry_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    return registry.problems(display_name=values["vertex_model_display_name"],
                             parent_model=values["vertex_parent_model"],
                             serving_image=values["vertex_serving_image"])


@_rule("gate_metric", "gate_minimum", "max_regression", "binary_mode", "top_k")
def _gate_rules(values: Values, _reachability: Reachability) -> list[Problem]:
    return gate.option_problems(metric=values["gate_metric"], minimum=values["gate_minimum"],
                                max_regression=values["max_regression"], binary_mode=values["binary_mode"],
                                top_k=values["top_k"])


@_rule("tflite", "top_k", "export_uri", "batch_predict_source", "batch_predict_format", "serving_skew_action")
def _serving_rules(values: Values, reachability: Reachability) -> list[Problem]:
    found = contract.export_problems(tflite=values["tflite"], top_k=values["top_k"],
                                     serving_skew_action=values["serving_skew_action"])
    found += [problem for problem in contract.prediction_problems(
        output_format=values["batch_predict_format"], batch_size=contract.DEFAULT_PREDICTION_BATCH_SIZE,
        top_k=values["top_k"]) if problem.name != "top_k"]
    export_scheme = storage.scheme(values["export_uri"])
    if export_scheme and not values["export_uri"][len(export_scheme):].strip("/"):
        found.append(Problem("export_uri", values["export_uri"], f"a {export_scheme}BUCKET/PATH URI"))
    found += _source_problems("batch_predict_source", values["batch_predict_source"], reachability)
    return found


# --------------------------------------------------------------------------- helpers


def _looks_up(reachability: Reachability, uri: str) -> bool:
    """Whether the rules look ``uri`` up: always, never, or as the caller's function says."""
    return reachability(uri) if callable(reachability) else bool(reachability)


def _source_problems(name: str, source: str, reachability: Reachability, tfds_data_dir: str = "") -> list[Problem]:
    if not source:
        return []
    if source.startswith(TFDS_PREFIX):
        if not source[len(TFDS_PREFIX):].partition(":")[0]:
            return [Problem(name, source, "tfds:NAME or tfds:NAME:CONFIG")]
        # Where TFDS keeps it decides whether it can be looked up from here (kic submit: a remote data dir it
        # can read, never the cluster's default folder).
        if not _looks_up(reachability, tfds_data_dir or source):
            return []
        reason = tfds_problem(source, tfds_data_dir)
        return [Problem(name, source, reason)] if reason else []
    if not _looks_up(reachability, source):
        return []
    try:
        found = _is_there(source)
    except OSError as error:  # storage.StorageError is one
        return [Problem(name, source, f"cannot be read: {error}")]
    if not found:
        kind = "manifest" if manifest.is_manifest(source) else "folder, gs:// or s3:// prefix"
        return [Problem(name, source, f"no such {kind}")]
    return []


def _folder_problems(name: str, uri: str) -> list[Problem]:
    try:
        there = _is_there(uri)
    except OSError as error:  # storage.StorageError is one
        return [Problem(name, uri, f"cannot be read: {error}")]
    return [] if there else [Problem(name, uri, "no such folder")]


def _is_there(uri: str) -> bool:
    """Whether ``uri`` exists. Only its absence is False: an error that keeps
    it from being looked at (a permission, credentials, the network) is
    raised, as os.path.exists would call it missing."""
    try:
        if storage.is_remote(uri):
            return storage.exists(uri)
        os.stat(uri)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


def _typed(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    typed, found = {}, []
    for name, value in values.items():
        parameter = PARAMETERS_BY_NAME.get(name)
        if parameter is None:
            found.append(Problem(name, value, _unknown_hint(name)))
            continue
        try:
            typed[name] = config.coerce(value, parameter.type, choices=config.choices_of(name))
        except ValueError as error:
            found.append(Problem(name, value, str(error)))
    return typed, found


def _unknown_hint(name: str) -> str:
    close = difflib.get_close_matches(name, list(PARAMETERS_BY_NAME), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "see `kic run --list-params`"
    return f"unknown pipeline parameter; {hint}"
