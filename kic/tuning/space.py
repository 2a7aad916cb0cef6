"""What a tuning run searches: which hyperparameters vary, and over what.

``read`` takes a search-space document in either of two formats:

* ours::

    {"parameters": {
        "learning_rate": {"min": 1e-5, "max": 0.1, "scale": "log"},
        "batch_size": {"min": 8, "max": 64},
        "optimizer": {"values": ["adam", "sgd"]}},
     "objective": {"metric": "val_accuracy", "direction": "maximize"},
     "strategy": "tpe", "trials": 20, "parallelism": 4, "seed": 7}

  Everything but ``parameters`` is optional. A range's type (int or float) is
  the hyperparameter's own; booleans and strings are searched over values.
  ``scale``: linear (default), log, reverse_log (dense near 1, for momentum and
  the betas) or auto.

* the reference's tuning job, as is: its ``ParameterRanges``
  (``ContinuousParameterRanges``, ``IntegerParameterRanges``,
  ``CategoricalParameterRanges``, with ``Name``, ``MinValue``/``MaxValue`` as
  strings, ``ScalingType`` and ``Values``), alone or inside the
  ``HyperParameterTuningJobConfig`` of a CreateHyperParameterTuningJob
  request (or of what DescribeHyperParameterTuningJob answers). Its objective,
  strategy, limits and random seed are read too, and the training job
  definition's ``StaticHyperParameters`` (the fixed hyperparameters, all
  strings) are carried over.

``problems`` checks a space against the hyperparameter contract through the
pipeline's front door (``kic.parameters``): every value a range can produce
(its ends; every categorical value), and every pair of them, so a range
outside the contract or a combination it forbids (an eval_metric that needs
binary_mode) is found before any trial starts. Ranges are intervals and the
contract's rules are bounds and pairwise rules, so checking the ends and the
pairs checks every point in between.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kic import config
from kic.errors import ParameterError, Problem

__all__ = ["CATEGORICAL", "FLOAT", "INT", "LINEAR", "LOG", "REVERSE_LOG", "Dimension", "SearchDocument", "load_json",
           "parse", "problems", "read"]

FLOAT, INT, CATEGORICAL = "float", "int", "categorical"
LINEAR, LOG, REVERSE_LOG, AUTO = "linear", "log", "reverse_log", "auto"
SCALES = (LINEAR, LOG, REVERSE_LOG, AUTO)
# "auto" picks log for a positive range spanning at least this ratio (three
# orders of magnitude, such as a learning rate's), linear otherwise.
AUTO_LOG_RATIO = 1000.0

# The reference's ScalingType values.
REFERENCE_SCALES = {"auto": AUTO, "linear": LINEAR, "logarithmic": LOG, "reverselogarithmic": REVERSE_LOG}
# The reference's tuning strategies, in ours (Hyperband has no counterpart: see STRATEGY_HINTS).
REFERENCE_STRATEGIES = {"bayesian": "tpe", "random": "random", "grid": "grid"}
REFERENCE_RANGE_KINDS = {"ContinuousParameterRanges": FLOAT, "IntegerParameterRanges": INT,
                         "CategoricalParameterRanges": CATEGORICAL}
# Keys of the reference's static hyperparameters that are the tuning service's own, not the algorithm's.
REFERENCE_INTERNAL_PREFIXES = ("_tuning_objective_metric", "sagemaker_")
# What names the search-space document in problems.
NAME = "search_space"

_OUR_KEYS = ("parameters", "objective", "strategy", "trials", "parallelism", "seed")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a range (``low``..``high`` on ``scale``) or ``values``."""

    name: str
    kind: str  # FLOAT, INT or CATEGORICAL
    low: float = 0.0
    high: float = 0.0
    scale: str = LINEAR  # LINEAR, LOG or REVERSE_LOG (never AUTO: resolved when read)
    values: tuple = ()  # CATEGORICAL: typed as the hyperparameter is

    @property
    def extremes(self) -> tuple:
        """The values that bound what this dimension can produce."""
        return self.values if self.kind == CATEGORICAL else (self.low, self.high)

    def to_json(self) -> dict[str, Any]:
        if self.kind == CATEGORICAL:
            return {"name": self.name, "values": list(self.values)}
        return {"name": self.name, "type": self.kind, "min": self.low, "max": self.high, "scale": self.scale}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Dimension:
        """The inverse of ``to_json``; numbers may arrive as floats (a KFP struct's)."""
        name = payload["name"]
        if "values" in payload:
            field_type = _field_type(name)
            return cls(name, CATEGORICAL, values=tuple(config.coerce(value, field_type) for value in payload["values"]))
        cast = int if payload["type"] == INT else float
        return cls(name, payload["type"], low=cast(payload["min"]), high=cast(payload["max"]), scale=payload["scale"])

    def describe(self) -> str:
        if self.kind == CATEGORICAL:
            return "one of " + ", ".join(str(value) for value in self.values)
        scale = "" if self.scale == LINEAR else f", {self.scale.replace('_', ' ')} scale"
        return f"{self.kind} in [{self.low:g}, {self.high:g}]{scale}"


@dataclasses.dataclass(frozen=True)
class SearchDocument:
    """A search-space document: the dimensions, and the settings it carries (empty or 0: not set)."""

    dimensions: tuple[Dimension, ...]
    objective_metric: str = ""
    objective_direction: str = ""
    strategy: str = ""
    trials: int = 0
    parallelism: int = 0
    seed: int | None = None
    static_hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    format: str = "kic"  # or "reference"
    notes: tuple[str, ...] = ()  # what was carried over from a reference job, or left behind

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dimension.name for dimension in self.dimensions)


# --------------------------------------------------------------------------- reading


def read(source: str) -> SearchDocument:
    """A document from JSON text, or from a JSON file (local or gs://); raises
    ParameterError with every problem of form."""
    document, found = parse(load_json(source))
    if found:
        raise ParameterError(found)
    return document


def names_a_file(source: str) -> bool:
    """Whether the search space ``source`` is a file's path or URI, not JSON text."""
    text = source.strip()
    return bool(text) and not text.startswith("{")


def load_json(source: str) -> dict[str, Any]:
    """The JSON object of a document: JSON text, or a JSON file (local or gs://)."""
    text = source.strip()
    if not text:
        raise ParameterError([Problem(NAME, source, "required: a JSON file (or JSON text) of the ranges to search")])
    if names_a_file(text):
        from kic import storage

        try:
            text = storage.read_text(text)
        except (OSError, storage.StorageError) as error:
            raise ParameterError([Problem(NAME, source, f"cannot be read: {error}")]) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParameterError([Problem(NAME, source[:80], f"not valid JSON ({error})")]) from None
    if not isinstance(payload, dict):
        raise ParameterError([Problem(NAME, type(payload).__name__, "a JSON object")])
    return payload


def parse(payload: Mapping[str, Any]) -> tuple[SearchDocument, list[Problem]]:
    """A document from its parsed JSON, in either format, and every problem
    of form (the document holds the dimensions that have none)."""
    found: list[Problem] = []
    if _is_reference(payload):
        document = _parse_reference(payload, found)
    else:
        document = _parse_ours(payload, found)
    names = [dimension.name for dimension in document.dimensions]
    for name in sorted({name for name in names if names.count(name) > 1}):
        found.append(Problem(f"{NAME}.{name}", name, "given more than once"))
    if not document.dimensions and not found:
        found.append(Problem(NAME, "{}", "no parameter ranges: name at least one hyperparameter to search"))
    return document, found


def _is_reference(payload: Mapping[str, Any]) -> bool:
    return bool({"HyperParameterTuningJobConfig", "ParameterRanges", "TrainingJobDefinition",
                 *REFERENCE_RANGE_KINDS}.intersection(payload))


def _parse_ours(payload: Mapping[str, Any], found: list[Problem]) -> SearchDocument:
    for key in payload:
        if key not in _OUR_KEYS:
            found.append(Problem(f"{NAME}.{key}", payload[key], "unknown key; the keys are " + ", ".join(_OUR_KEYS)
                                 + " (or the reference's ParameterRanges)"))
    parameters = payload.get("parameters")
    dimensions = []
    if not isinstance(parameters, Mapping):
        found.append(Problem(f"{NAME}.parameters", parameters, "an object of hyperparameter name -> range or values"))
    else:
        for raw_name, spec in parameters.items():
            dimension = _our_dimension(raw_name, spec, found)
            if dimension:
                dimensions.append(dimension)
    objective = payload.get("objective", {})
    if isinstance(objective, str):
        objective = {"metric": objective}
    if not isinstance(objective, Mapping) or set(objective) - {"metric", "direction"}:
        found.append(Problem(f"{NAME}.objective", objective, 'a metric name, or {"metric": ..., "direction": '
                                                             '"maximize" or "minimize"}'))
        objective = {}
    return SearchDocument(
        dimensions=tuple(dimensions), objective_metric=_text(objective.get("metric", ""), "objective.metric", found),
        objective_direction=_text(objective.get("direction", ""), "objective.direction", found),
        strategy=_text(payload.get("strategy", ""), "strategy", found),
        trials=_count(payload.get("trials", 0), "trials", found),
        parallelism=_count(payload.get("parallelism", 0), "parallelism", found),
        seed=_seed(payload.get("seed"), "seed", found))


def _our_dimension(raw_name: str, spec: Any, found: list[Problem]) -> Dimension | None:
    name = _hyperparameter_name(raw_name, found)
    where = f"{NAME}.{raw_name}"
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        found.append(Problem(where, spec, '{"min": ..., "max": ..., "scale": ...} or {"values": [...]}'))
        return None
    unknown = set(spec) - {"min", "max", "scale", "type", "values"}
    if unknown or ("values" in spec) == ("min" in spec or "max" in spec):
        found.append(Problem(where, spec, 'either {"min": ..., "max": ..., "scale": ...} or {"values": [...]}'))
        return None
    if name is None:
        return None
    if "values" in spec:
        return _categorical(name, where, spec["values"], found)
    field_type = _field_type(name)
    declared = spec.get("type", field_type if field_type in (INT, FLOAT) else FLOAT)
    if field_type not in (INT, FLOAT):
        found.append(Problem(where, spec, f"a {field_type} hyperparameter: search it over values "
                                          '({"values": [...]})'))
        return None
    if declared != field_type:
        found.append(Problem(where, declared, f"{name} is a {field_type}: its range has type {field_type}"))
        return None
    return _range(name, where, field_type, spec.get("min"), spec.get("max"), spec.get("scale", LINEAR), found)


def _parse_reference(payload: Mapping[str, Any], found: list[Problem]) -> SearchDocument:
    job = payload.get("HyperParameterTuningJobConfig", payload)
    definition = payload.get("TrainingJobDefinition") or {}
    if not isinstance(job, Mapping) or not isinstance(definition, Mapping):
        found.append(Problem(NAME, "HyperParameterTuningJobConfig", "a JSON object"))
        return SearchDocument(dimensions=())
    ranges = job.get("ParameterRanges") or definition.get("HyperParameterRanges") or job
    notes: list[str] = []
    dimensions = []
    for key, kind in REFERENCE_RANGE_KINDS.items():
        entries = ranges.get(key, []) if isinstance(ranges, Mapping) else []
        if not isinstance(entries, list):
            found.append(Problem(f"{NAME}.{key}", entries, "a list of ranges"))
            continue
        for entry in entries:
            dimension = _reference_dimension(key, kind, entry, found)
            if dimension:
                dimensions.append(dimension)
    objective = job.get("HyperParameterTuningJobObjective") or {}
    limits = job.get("ResourceLimits") or {}
    strategy = str(job.get("Strategy", ""))
    ours = REFERENCE_STRATEGIES.get(strategy.lower(), "")
    if strategy and not ours:
        found.append(Problem(f"{NAME}.Strategy", strategy, "Bayesian (tpe here), Random or Grid: Hyperband stops "
                                                           "trials early, which separate pipeline tasks cannot; use "
                                                           "Bayesian or Random, with early_stopping"))
    for key in ("TrainingJobEarlyStoppingType", "TuningJobCompletionCriteria"):
        if job.get(key) not in (None, "", "Off"):
            notes.append(f"{key} is not carried over: each trial stops on its own early_stopping settings")
    if payload.get("WarmStartConfig"):
        notes.append("WarmStartConfig is not carried over: the search starts afresh")
    static = {name: value for name, value in (definition.get("StaticHyperParameters") or {}).items()
              if not name.startswith(REFERENCE_INTERNAL_PREFIXES)}
    if static:
        notes.append(f"the training job's StaticHyperParameters ({len(static)}) are fixed hyperparameters: kic tune "
                     "applies them (under --param); a pipeline run takes them as its parameters")
    return SearchDocument(
        dimensions=tuple(dimensions), objective_metric=_text(objective.get("MetricName", ""), "MetricName", found),
        objective_direction=_text(objective.get("Type", ""), "Type", found), strategy=ours,
        trials=_count(limits.get("MaxNumberOfTrainingJobs", 0), "MaxNumberOfTrainingJobs", found),
        parallelism=_count(limits.get("MaxParallelTrainingJobs", 0), "MaxParallelTrainingJobs", found),
        seed=_seed(job.get("RandomSeed"), "RandomSeed", found), static_hyperparameters=static, format="reference",
        notes=tuple(notes))


def _reference_dimension(key: str, kind: str, entry: Any, found: list[Problem]) -> Dimension | None:
    if not isinstance(entry, Mapping) or "Name" not in entry:
        found.append(Problem(f"{NAME}.{key}", entry, 'a range: {"Name": ..., ...}'))
        return None
    raw_name = str(entry["Name"])
    where = f"{NAME}.{raw_name}"
    name = _hyperparameter_name(raw_name, found)
    if name is None:
        return None
    field_type = _field_type(name)
    if kind == CATEGORICAL:
        return _categorical(name, where, entry.get("Values"), found)
    if field_type != kind:
        expected = {INT: "IntegerParameterRanges", FLOAT: "ContinuousParameterRanges"}.get(
            field_type, "CategoricalParameterRanges")
        found.append(Problem(where, key, f"{name} is a {field_type}: give it in {expected}"))
        return None
    scale = str(entry.get("ScalingType", "Auto"))
    scale = REFERENCE_SCALES.get(scale.lower(), scale)
    if kind == INT and scale == REVERSE_LOG:
        found.append(Problem(where, "ReverseLogarithmic", "Auto, Linear or Logarithmic for an integer range"))
        return None
    return _range(name, where, kind, entry.get("MinValue"), entry.get("MaxValue"), scale, found,
                  scale_names="Auto, Linear, Logarithmic or ReverseLogarithmic")


def _range(name: str, where: str, kind: str, low: Any, high: Any, scale: Any, found: list[Problem],
           scale_names: str = "") -> Dimension | None:
    bounds = []
    for label, value in (("min", low), ("max", high)):
        try:
            number = config.coerce(value, kind)
        except ValueError as error:
            found.append(Problem(f"{where}.{label}", value, str(error)))
            continue
        if not math.isfinite(number):
            found.append(Problem(f"{where}.{label}", value, "a finite number"))
            continue
        bounds.append(number)
    if scale not in SCALES:
        found.append(Problem(f"{where}.scale", scale, scale_names or ", ".join(SCALES)))
        return None
    if len(bounds) < 2:
        return None
    low, high = bounds
    if low > high:
        found.append(Problem(where, f"min {low:g} > max {high:g}", "min <= max"))
        return None
    if scale == AUTO:
        scale = LOG if low > 0 and high >= AUTO_LOG_RATIO * low else LINEAR
    if scale == LOG and low <= 0:
        found.append(Problem(where, f"min {low:g}", "a logarithmic scale needs min > 0"))
        return None
    if scale == REVERSE_LOG and not 0 <= low <= high < 1:
        found.append(Problem(where, f"[{low:g}, {high:g}]", "a reverse logarithmic scale needs 0 <= min <= max < 1"))
        return None
    if kind == INT and scale == REVERSE_LOG:
        found.append(Problem(f"{where}.scale", scale, "linear or log for an integer range"))
        return None
    return Dimension(name, kind, low=low, high=high, scale=scale)


def _categorical(name: str, where: str, values: Any, found: list[Problem]) -> Dimension | None:
    if not isinstance(values, list) or not values:
        found.append(Problem(f"{where}.values", values, "a non-empty list of values"))
        return None
    field_type = _field_type(name)
    typed = []
    for value in values:
        try:
            typed.append(config.coerce(value, field_type))
        except ValueError as error:
            found.append(Problem(f"{where}.values", value, str(error)))
    if len(typed) < len(values):
        return None
    return Dimension(name, CATEGORICAL, values=tuple(dict.fromkeys(typed)))  # repeats removed, order kept


def _hyperparameter_name(raw_name: str, found: list[Problem]) -> str | None:
    name = config.ALIASES.get(raw_name, raw_name)
    if name in config.TrainingConfig.field_names():
        return name
    candidates = [*config.TrainingConfig.field_names(), *config.ALIASES]
    close = difflib.get_close_matches(raw_name, candidates, n=1, cutoff=0.5)
    hint = f"did you mean {config.ALIASES.get(close[0], close[0])!r}?" if close else (
        "one of the 25 hyperparameters (`kic run --list-params`)")
    found.append(Problem(f"{NAME}.{raw_name}", raw_name, f"not a hyperparameter that can be searched; {hint}"))
    return None


def _field_type(name: str) -> str:
    return next(field.type for field in dataclasses.fields(config.TrainingConfig) if field.name == name)


def _text(value: Any, key: str, found: list[Problem]) -> str:
    if not isinstance(value, str):
        found.append(Problem(f"{NAME}.{key}", value, "a string"))
        return ""
    return value.strip()


def _count(value: Any, key: str, found: list[Problem]) -> int:
    try:
        count = config.coerce(value, "int")
    except ValueError:
        count = -1
    if count < 0:
        found.append(Problem(f"{NAME}.{key}", value, "a positive integer"))
        return 0
    return count


def _seed(value: Any, key: str, found: list[Problem]) -> int | None:
    if value is None or value == "":
        return None
    try:
        return config.coerce(value, "int")
    except ValueError as error:
        found.append(Problem(f"{NAME}.{key}", value, str(error)))
        return None


# --------------------------------------------------------------------------- against the contract


def problems(dimensions: Sequence[Dimension], base: Mapping[str, Any]) -> list[Problem]:
    """Every value, and every pair of values, that ``dimensions`` can produce
    and the front door rejects, with the other parameters at ``base`` (typed
    pipeline parameters: the hyperparameters, and any others whose rules
    involve them, such as gate_metric and top_k). ``base`` itself is assumed
    valid: the pipeline's validate step checks it.

    A value is checked with the other searched hyperparameters at a value
    they can produce (their first that is valid alone), never at their base
    value, which no trial has: binary_mode searched over [True] makes
    eval_metric=auc valid though the base binary_mode is False."""
    from kic import parameters

    def rejected(values: Mapping[str, Any]) -> set[Problem]:
        return set(parameters.problems({**base, **values}, reachability=False))

    base_problems = rejected({})
    neutral = {}
    for dimension in dimensions:
        neutral[dimension.name] = next((value for value in dimension.extremes
                                        if rejected({dimension.name: value}) <= base_problems), dimension.extremes[0])

    def context(*names: str) -> dict[str, Any]:
        return {name: value for name, value in neutral.items() if name not in names}

    found: list[Problem] = []
    alone: dict[tuple[str, Any], set[Problem]] = {}
    for dimension in dimensions:
        without = rejected(context(dimension.name))
        for value in dimension.extremes:
            alone[(dimension.name, value)] = rejected({**context(dimension.name), dimension.name: value}) - without
            for problem in sorted(alone[(dimension.name, value)], key=str):
                found.append(Problem(f"{NAME}.{dimension.name}", value, _because(problem, dimension.name, value)))
    for first, second in itertools.combinations(dimensions, 2):
        without = rejected(context(first.name, second.name))
        for a, b in itertools.product(first.extremes, second.extremes):
            together = (rejected({**context(first.name, second.name), first.name: a, second.name: b}) - without
                        - alone[(first.name, a)] - alone[(second.name, b)])
            for problem in sorted(together, key=str):
                found.append(Problem(f"{NAME}.{first.name},{second.name}", (a, b),
                                     f"the space can produce this combination, which is invalid: {problem}"))
    return found


def _because(problem: Problem, name: str, value: Any) -> str:
    if problem.name == name and problem.value == value:
        return f"the space can produce this value, which is invalid: {problem.expected}"
    return f"the space can produce this value, with which {problem}"
