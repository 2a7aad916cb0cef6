"""Pipeline parameters from the command line: types from the compiled
pipeline, validation from the contract, every problem reported at once."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import yaml

from kic.config import ParameterError, Problem, TrainingConfig, coerce

# Parameter types in KFP's pipeline IR -> the contract's type names.
IR_TYPES = {"STRING": "str", "NUMBER_INTEGER": "int", "NUMBER_DOUBLE": "float", "BOOLEAN": "bool"}
TFLITE_CHOICES = ("", "float32", "float16", "int8")


def pipeline_parameters(pipeline_yaml: str) -> dict[str, tuple[str, Any]]:
    """name -> (type name, default or None when required), read from the compiled IR."""
    with open(pipeline_yaml, encoding="utf-8") as handle:
        spec = yaml.safe_load(handle)
    parameters = {}
    for name, definition in spec["root"]["inputDefinitions"]["parameters"].items():
        type_name = IR_TYPES[definition["parameterType"]]
        default = definition.get("defaultValue")
        if default is not None:
            default = coerce(default, type_name)
        parameters[name] = (type_name, default)
    return parameters


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    values, problems = {}, []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            problems.append(Problem("--param", assignment, "expected NAME=VALUE"))
            continue
        values[name.strip()] = value
    if problems:
        raise ParameterError(problems)
    return values


def resolve(parameters: Mapping[str, tuple[str, Any]], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merges override layers (later wins) over the defaults, converts types and
    validates: hyperparameters through the contract, the rest by type and by
    the checks that can run without data. Raises ParameterError."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    problems: list[Problem] = []
    values = {name: default for name, (_, default) in parameters.items()}
    for name, raw in merged.items():
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "see `kic run --list-params`"
            problems.append(Problem(name, raw, f"unknown pipeline parameter; {hint}"))
            continue
        try:
            values[name] = coerce(raw, parameters[name][0])
        except ValueError as error:
            problems.append(Problem(name, raw, str(error)))
    hyperparameter_names = set(TrainingConfig.field_names())
    if not any(problem.name in hyperparameter_names for problem in problems):
        try:
            TrainingConfig.from_dict({name: values[name] for name in hyperparameter_names})
        except ParameterError as error:
            problems.extend(error.problems)
    problems.extend(_other_checks(values))
    missing = [name for name, value in values.items() if value is None]
    problems.extend(Problem(name, None, "required") for name in missing)
    if problems:
        raise ParameterError(problems)
    return values


def check_training_choices(*, backbone: Any, image_size: Any) -> list[Problem]:
    """The checks of train's non-hyperparameter inputs that need no data."""
    from kic.model import backbones

    problems = []
    if isinstance(backbone, str):
        try:
            backbones.resolve(backbone)
        except ValueError as error:
            problems.append(Problem("backbone", backbone, str(error)))
    if isinstance(image_size, int) and image_size != 0 and image_size < 32:
        problems.append(Problem("image_size", image_size, "0 (the backbone's size) or at least 32"))
    return problems


def prepared_short_side(*, backbone: str, image_size: int, requested: int) -> int:
    """The short side prepare stores: ``requested`` when set, else about 8/7
    of the model's input size (room for zoom augmentation) rounded up to a
    multiple of 32, so each training epoch decodes small JPEGs rather than
    images sized for the largest backbone."""
    if requested > 0:
        return requested
    from kic.model import backbones

    size = image_size or backbones.resolve(backbone).input_size
    return math.ceil(size * 8 / 7 / 32) * 32


def _other_checks(values: Mapping[str, Any]) -> list[Problem]:
    problems = check_training_choices(backbone=values.get("backbone"), image_size=values.get("image_size"))
    for name in ("validation_fraction", "test_fraction", "max_rejected_fraction"):
        value = values.get(name)
        if isinstance(value, float) and not 0.0 <= value < 1.0:
            problems.append(Problem(name, value, "a number in [0, 1)"))
    if values.get("validation_fraction") == 0.0 and not values.get("validation_source"):
        problems.append(Problem("validation_fraction", 0.0, "above 0 unless validation_source is given: training "
                                                             "picks its best epoch on validation images"))
    fractions = [values.get(name) for name in ("validation_fraction", "test_fraction")]
    if all(isinstance(value, float) for value in fractions) and sum(fractions) >= 1.0:
        problems.append(Problem("validation_fraction+test_fraction", sum(fractions),
                                "must leave training images: below 1"))
    if values.get("tflite") not in (None, *TFLITE_CHOICES):
        problems.append(Problem("tflite", values["tflite"], "one of: (empty), float32, float16, int8"))
    top_k = values.get("top_k")
    if isinstance(top_k, int) and top_k < 1:
        problems.append(Problem("top_k", top_k, "an int >= 1"))
    return problems
