"""The typed contract of the 25 training hyperparameters.

``TrainingConfig`` mirrors the reference algorithm's hyperparameter table with
the same names and defaults. It is frozen and validates itself on creation:
an invalid value or combination raises ONE ``HyperparameterError`` that lists
every problem (name, bad value, what is valid), before any data is read or
any model is built.

``from_reference_json`` accepts the reference algorithm's all-strings JSON
("True", "0.2", and the aliases ``train_only_top_layer`` and ``eps``), so
users can bring their existing hyperparameter files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from kic.errors import ParameterError, Problem

__all__ = ["HyperparameterError", "ParameterError", "Problem", "TrainingConfig", "coerce", "from_reference_json"]

FLIP_MODES = ("horizontal_and_vertical", "horizontal", "vertical", "None")
EVAL_METRICS = ("accuracy", "precision", "recall", "auc", "prc")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")
OPTIMIZERS = ("adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta")
REINITIALIZE_CHOICES = ("Auto", "True", "False")
# Training's precision and XLA settings (kic.training.precision): pipeline parameters, not hyperparameters.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE_CHOICES = ("auto", "true", "false")

# Which optimizer reads which parameter; the others are accepted and ignored
# (and the training log says so).
OPTIMIZER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "adam": ("beta_1", "beta_2", "epsilon"),
    "sgd": ("momentum",),
    "nesterov": ("momentum",),
    "rmsprop": ("rho", "momentum", "epsilon"),
    "adagrad": ("initial_accumulator_value", "epsilon"),
    "adadelta": ("rho", "epsilon"),
}
OPTIMIZER_SPECIFIC = frozenset(p for params in OPTIMIZER_PARAMETERS.values() for p in params)

# The reference training script's own spellings.
ALIASES = {"train_only_top_layer": "train_only_on_top_layer", "eps": "epsilon"}

# What SageMaker adds to a training job's hyperparameters: the SDK's
# sagemaker_program, sagemaker_submit_directory, sagemaker_region,
# sagemaker_job_name, sagemaker_container_log_level, ..., and a tuning job's
# _tuning_objective_metric. They configure SageMaker, not training: a job's
# hyperparameters brought as they are drop them, with a note.
SAGEMAKER_PREFIX = "sagemaker_"
SAGEMAKER_KEYS = frozenset({"_tuning_objective_metric"})

# The seed of initialisation, shuffling and augmentation (not one of the 25).
DEFAULT_SEED = 42
# train's checkpoints between epoch ends (kic.training.checkpoints): 1,000 steps are minutes on a GPU, and a
# checkpoint (a few hundred MB for ResNet50 with Adam's moments) takes seconds to write.
DEFAULT_CHECKPOINT_EVERY_STEPS = 1000


def _param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None):
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "high": high, "choices": choices})


Note = Callable[[str], None]


class HyperparameterError(ParameterError):
    """Every problem found in the training hyperparameters, reported at once."""

    what = "hyperparameters"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The 25 hyperparameters of training, with the reference algorithm's defaults."""

    augmentation: bool = _param(False, "Apply the random flip, rotation and zoom below to training images.")
    augmentation_random_flip: str = _param(
        "horizontal_and_vertical", "Flip mode of the augmentation.", choices=FLIP_MODES)
    augmentation_random_rotation: float = _param(
        0.2, "Largest random rotation, as a fraction of a full turn (2*pi): f > 0 turns either way by up to f, "
        "f < 0 only clockwise by up to -f; 0 disables it.",
        low=-1.0, high=1.0)
    augmentation_random_zoom: float = _param(
        0.1, "Largest random zoom, as a fraction of the image size: f > 0 zooms out or in by up to f, f < 0 only "
        "in by up to -f; 0 disables it.",
        low=-1.0, high=1.0)
    # Above 32,768 no accelerator holds one batch's activations, even of the smallest backbone at 224 px.
    batch_size: int = _param(32, "Global batch size, split across all replicas.", low=1, high=32768)
    beta_1: float = _param(0.9, "Adam: decay rate of the first-moment estimates.", low=0.0, high=1.0)
    beta_2: float = _param(0.999, "Adam: decay rate of the second-moment estimates.", low=0.0, high=1.0)
    binary_mode: bool = _param(
        False, "One sigmoid output: the probability of the positive (alphabetically second) class. "
        "Two-class data only.")
    dropout_rate: float = _param(0.2, "Dropout rate before the top dense layer.", low=0.0, high=1.0)
    early_stopping: bool = _param(False, "Stop when the monitored validation metric stops improving.")
    early_stopping_min_delta: float = _param(
        0.0, "Smallest absolute change of the monitored metric that counts as an improvement.",
        low=0.0, high=1.0)
    early_stopping_patience: int = _param(5, "Epochs without improvement before stopping.", low=1)
    epochs: int = _param(3, "Number of training epochs.", low=1)
    epsilon: float = _param(1e-7, "Numerical-stability constant of adam, rmsprop, adadelta and adagrad.",
                            low=0.0, high=1.0)
    eval_metric: str = _param(
        "accuracy", "Validation metric that picks the best epoch and drives early stopping; "
        "anything but accuracy needs binary_mode.", choices=EVAL_METRICS)
    image_resize_interpolation: str = _param(
        "bilinear", "Interpolation of the resize to the backbone's input size.", choices=INTERPOLATIONS)
    initial_accumulator_value: float = _param(0.0001, "Adagrad: starting accumulator value.",
                                              low=0.0, high=1.0)
    label_smoothing: float = _param(0.1, "Label smoothing of the cross-entropy loss.", low=0.0, high=1.0)
    learning_rate: float = _param(0.001, "Optimizer learning rate.", low=0.0, high=1.0)
    momentum: float = _param(0.9, "Momentum of sgd, nesterov and rmsprop.", low=0.0, high=1.0)
    optimizer: str = _param("adam", "Optimizer; nesterov is SGD with Nesterov momentum.", choices=OPTIMIZERS)
    regularizers_l2: float = _param(0.0001, "L2 factor on the top dense layer's kernel.", low=0.0, high=1.0)
    reinitialize_top_layer: str = _param(
        "Auto", "Auto: new top layer on a pretrained backbone, kept when continuing from an earlier "
        "model of ours; True: always new; False: always kept.", choices=REINITIALIZE_CHOICES)
    rho: float = _param(0.95, "Gradient discounting factor of adadelta and rmsprop.", low=0.0, high=1.0)
    train_only_on_top_layer: bool = _param(
        False, "Freeze the backbone (weights and batch-norm statistics); train only the top layer.")

    def __post_init__(self) -> None:
        problems = _field_problems(self)
        if self.eval_metric in EVAL_METRICS[1:] and self.binary_mode is False:
            problems.append(Problem("eval_metric", self.eval_metric,
                                    "only 'accuracy' is valid unless binary_mode=True"))
        if problems:
            raise HyperparameterError(problems)

    # ------------------------------------------------------------------ API
    @property
    def monitored_metric(self) -> str:
        """The Keras history key that picks the best epoch and drives early stopping."""
        return f"val_{self.eval_metric}"

    def ignored_parameters(self) -> list[str]:
        """Optimizer parameters the chosen optimizer does not read."""
        used = set(OPTIMIZER_PARAMETERS[self.optimizer])
        return sorted(OPTIMIZER_SPECIFIC - used)

    def check_against_data(self, num_classes: int) -> None:
        """The rules that need the data: binary_mode is for two-class data only."""
        problems = []
        if num_classes < 2:
            problems.append(Problem("num_classes", num_classes, "training needs at least 2 classes"))
        if self.binary_mode and num_classes != 2:
            problems.append(Problem("binary_mode", True,
                                    f"needs exactly 2 classes, but the data has {num_classes}"))
        if problems:
            raise HyperparameterError(problems)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_reference_dict(self) -> dict[str, str]:
        """Every value as a string, as the reference algorithm's hyperparameter
        JSON carries them ("True", "32", "0.001"): what ``from_reference_json`` reads."""
        return {name: repr(value) if isinstance(value, float) else str(value) for name, value in self.to_dict().items()}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], note: Note | None = None) -> TrainingConfig:
        """Builds a config from typed values or strings (as the reference JSON
        and command lines carry them). Unknown names are errors, except the
        keys SageMaker adds (see without_sagemaker_keys)."""
        problems: list[Problem] = []
        typed: dict[str, Any] = {}
        fields = {field.name: field for field in dataclasses.fields(cls)}
        for raw_name, raw_value in without_sagemaker_keys(values, note).items():
            name = ALIASES.get(raw_name, raw_name)
            if name not in fields:
                problems.append(Problem(raw_name, raw_value, _unknown_name_hint(raw_name, fields)))
                continue
            if name in typed:
                problems.append(Problem(raw_name, raw_value, f"given twice (also as {name!r})"))
                continue
            try:
                typed[name] = coerce(raw_value, fields[name].type, choices=fields[name].metadata["choices"])
            except ValueError as error:
                problems.append(Problem(name, raw_value, str(error)))
        if problems:
            # Report the well-typed values' range problems together with the rest.
            try:
                cls(**typed)
            except HyperparameterError as error:
                problems.extend(error.problems)
            raise HyperparameterError(problems)
        return cls(**typed)


def descriptions() -> dict[str, str]:
    """Each hyperparameter's help text with what is valid, for docstrings and listings."""
    return {field.name: field.metadata["help"] + _valid_text(field) for field in dataclasses.fields(TrainingConfig)}


def _valid_text(field: dataclasses.Field) -> str:
    meta = field.metadata
    if meta["choices"]:
        return " One of: " + ", ".join(meta["choices"]) + "."
    if meta["low"] is not None and meta["high"] is not None:
        return f" Range [{meta['low']:g}, {meta['high']:g}]."
    if meta["low"] is not None:
        return f" At least {meta['low']:g}."
    return ""


def from_reference_json(source: str | os.PathLike | Mapping[str, Any], note: Note | None = None) -> TrainingConfig:
    """Reads the reference algorithm's hyperparameter JSON: a dict, a JSON
    string or a path to a JSON file; values may all be strings. The keys
    SageMaker adds to a job's hyperparameters are dropped with a note."""
    return TrainingConfig.from_dict(source if isinstance(source, Mapping) else read_json_object(source), note)


def is_sagemaker_key(name: str) -> bool:
    return name.startswith(SAGEMAKER_PREFIX) or name in SAGEMAKER_KEYS


def without_sagemaker_keys(values: Mapping[str, Any], note: Note | None = None) -> dict[str, Any]:
    """``values`` without the keys SageMaker adds to a job's hyperparameters;
    ``note`` (by default a warning) is told which were dropped."""
    dropped = sorted(name for name in values if is_sagemaker_key(name))
    if dropped:
        message = (f"ignored {', '.join(dropped)}: SageMaker adds these to a job's hyperparameters; they configure "
                   "SageMaker, not training")
        if note is None:
            warnings.warn(message, stacklevel=3)
        else:
            note(message)
    return {name: value for name, value in values.items() if name not in dropped}


def read_json_object(source: str | os.PathLike) -> dict[str, Any]:
    """A JSON object of name -> value, from a JSON string or a file (local or
    gs://), as it is: no names checked, no values converted."""
    text = str(source)
    if not text.lstrip().startswith("{"):
        from kic import storage

        try:
            text = storage.read_text(text)
        except UnicodeDecodeError as error:
            raise ParameterError([Problem("hyperparameters", text[:80], f"not UTF-8 text (byte {error.start}): "
                                          "save the file as UTF-8 JSON")]) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParameterError([Problem("hyperparameters", str(source)[:80], f"not valid JSON ({error})")]) from None
    except RecursionError:  # json's parser recurses once per level of nesting
        raise ParameterError([Problem("hyperparameters", str(source)[:80], "nested too deeply: expected a flat "
                                      "JSON object of name -> value")]) from None
    if not isinstance(payload, dict):
        raise ParameterError([Problem("hyperparameters", type(payload).__name__,
                                      "expected a JSON object of name -> value")])
    return payload


# --------------------------------------------------------------- internals
def coerce(value: Any, type_name: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Converts a typed value or its string form to the field's type. A string
    may be JSON-quoted (``"\"adam\""``), as SageMaker's framework estimators
    record every hyperparameter JSON-encoded, and booleans lower-case (JSON's
    ``true``); a string of ``choices`` is matched regardless of case, so that
    ``reinitialize_top_layer`` recorded as ``true`` or ``"false"`` reads as the
    reference's "True" / "False"."""
    type_name = getattr(type_name, "__name__", type_name)
    if isinstance(value, str):
        value = _json_unquoted(value)
        if choices and value not in choices:
            value = next((choice for choice in choices if choice.lower() == value.strip().lower()), value)
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError("expected a boolean: True or False")
    if type_name == "int":
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:  # exactly: through float a 20-digit seed would silently round
                return int(value.strip())
            except ValueError:
                pass
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError("expected an integer") from None
            if number.is_integer():
                return int(number)
        raise ValueError("expected an integer")
    if type_name == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError("expected a number") from None
        raise ValueError("expected a number")
    if type_name == "str":
        if isinstance(value, bool):
            return str(value)  # lets "True"/"False" choices be given as booleans
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    raise TypeError(f"unsupported field type {type_name!r}")


def _json_unquoted(text: str) -> str:
    """The string a JSON string literal holds; any other text as it is."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        try:
            decoded = json.loads(stripped)
        except ValueError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text


def choices_of(name: str) -> tuple[str, ...] | None:
    """The valid values of hyperparameter ``name`` when they are a fixed set (None otherwise, or not one of them)."""
    field = {field.name: field for field in dataclasses.fields(TrainingConfig)}.get(name)
    return field.metadata["choices"] if field else None


def _field_problems(config: TrainingConfig) -> list[Problem]:
    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        meta = field.metadata
        expected_type = {"bool": bool, "int": int, "float": (int, float), "str": str}[field.type]
        if not isinstance(value, expected_type) or (field.type != "bool" and isinstance(value, bool)):
            problems.append(Problem(field.name, value, f"expected type {field.type}"))
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            problems.append(Problem(field.name, value, "one of " + ", ".join(meta["choices"])))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem(field.name, value, "a finite number"))
            continue
        low, high = meta["low"], meta["high"]
        if (low is not None and value < low) or (high is not None and value > high):
            problems.append(Problem(field.name, value, _range_text(field.type, low, high)))
    return problems


def _range_text(type_name: str, low: float | None, high: float | None) -> str:
    if high is None:
        return f"an {type_name} >= {low:g}" if type_name == "int" else f"a number >= {low:g}"
    return f"a number in [{low:g}, {high:g}]"


def _unknown_name_hint(name: str, known: Mapping[str, Any]) -> str:
    candidates = list(known) + list(ALIASES)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f"unknown hyperparameter; did you mean {ALIASES.get(close[0], close[0])!r}?"
    return "unknown hyperparameter; valid names: " + ", ".join(known)
