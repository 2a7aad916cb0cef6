"""The tuning front door: the tuning pipeline's own parameters, and the settings a search runs with.

``resolve`` turns the search-space document and the tuning parameters into
``Settings`` (what to search, how, for how many trials, for which objective),
checking everything, the space against the hyperparameter contract included,
and raises one ``ParameterError`` with every problem. ``kic tune`` calls it
before anything runs; so does the pipeline's planning step, which runs before
any data is read. A parameter set explicitly wins over the document's
setting, which wins over the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kic import config
from kic.errors import ParameterError, Problem
from kic.parameters import Parameter
from kic.tuning import objective as objectives
from kic.tuning import space as spaces
from kic.tuning.objective import Objective
from kic.tuning.space import Dimension, SearchDocument

STRATEGIES = ("random", "sobol", "tpe", "grid")
DEFAULT_STRATEGY = "random"
DEFAULT_TRIALS = 8
# Trials run in two waves, each a ParallelFor whose results are collected:
# Vertex AI Pipelines caps a collected list of artifacts at 100.
MIN_TRIALS, MAX_TRIALS = 2, 100
# How many trials run at once on a cluster: a compile-time setting of the
# pipeline (KFP's ParallelFor takes a number, not a parameter).
DEFAULT_PARALLELISM = 4

TUNING_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("search_space", str, None,
              "The hyperparameter ranges to search: JSON text, or the path or gs:// URI of a JSON file, in kic's "
              "format or as the reference's tuning job (its ParameterRanges, objective, strategy and limits)."),
    Parameter("strategy", str, "", "How trials are chosen: " + ", ".join(STRATEGIES) + "; empty: the search "
                                   f"space's, else {DEFAULT_STRATEGY}."),
    Parameter("trials", int, 0, f"Number of trials ({MIN_TRIALS} to {MAX_TRIALS}); 0: the search space's, else "
                                f"{DEFAULT_TRIALS} (grid: every point of the grid)."),
    Parameter("objective_metric", str, "", "The training metric of the best epoch that picks the winner, such as "
                                           "val_accuracy or val_loss (the reference's validation:accuracy works "
                                           "too); empty: the search space's, else the monitored metric."),
    Parameter("objective_direction", str, "", "maximize or minimize; empty: the search space's, else minimize "
                                              "for a loss and maximize otherwise."),
)
TUNING_PARAMETERS_BY_NAME = {parameter.name: parameter for parameter in TUNING_PARAMETERS}
# The pipeline parameters (besides the hyperparameters) whose rules involve a
# hyperparameter, so a space is checked with them; and the seed of the sampler.
CONTEXT_PARAMETERS = ("gate_metric", "top_k", "seed")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a search runs with; passed between the pipeline's steps as JSON."""

    dimensions: tuple[Dimension, ...]
    strategy: str
    trials: int
    first_wave: int  # how many of the trials run in the first wave (see first_wave_size)
    objective: Objective
    seed: int
    hyperparameters: Mapping[str, Any]  # all 25, typed: the values of those not searched
    notes: tuple[str, ...] = ()  # what the document carried over from a reference job, or left behind

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dimension.name for dimension in self.dimensions)

    def to_json(self) -> dict[str, Any]:
        return {"dimensions": [dimension.to_json() for dimension in self.dimensions], "strategy": self.strategy,
                "trials": self.trials, "first_wave": self.first_wave, "objective": self.objective.to_json(),
                "seed": self.seed, "hyperparameters": dict(self.hyperparameters), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Settings:
        """The inverse of ``to_json``; numbers may arrive as floats (a KFP struct's)."""
        return cls(dimensions=tuple(Dimension.from_json(item) for item in payload["dimensions"]),
                   strategy=payload["strategy"], trials=int(payload["trials"]),
                   first_wave=int(payload["first_wave"]), objective=Objective(**payload["objective"]),
                   seed=int(payload["seed"]),
                   hyperparameters=config.TrainingConfig.from_dict(payload["hyperparameters"]).to_dict(),
                   notes=tuple(payload.get("notes", ())))


def resolve(document: str | Mapping[str, Any] | SearchDocument, *, values: Mapping[str, Any], strategy: str = "",
            trials: int = 0, objective_metric: str = "", objective_direction: str = "",
            parallelism: int = DEFAULT_PARALLELISM) -> Settings:
    """The settings of a search: ``document`` is the search-space document
    (its JSON text, file or URI; or parsed), ``values`` the typed pipeline
    parameters (at least the hyperparameters and CONTEXT_PARAMETERS). Raises
    ParameterError with every problem."""
    found: list[Problem] = []
    if isinstance(document, str):
        document = spaces.load_json(document)
    if not isinstance(document, SearchDocument):
        document, found = spaces.parse(document)
    strategy = (strategy or document.strategy or DEFAULT_STRATEGY).strip().lower()
    if strategy not in STRATEGIES:
        found.append(Problem("strategy", strategy, ", ".join(STRATEGIES)))
    if strategy == "grid":
        ranges = [dimension.name for dimension in document.dimensions if dimension.kind != spaces.CATEGORICAL]
        if ranges:
            found.append(Problem("strategy", "grid", "a grid needs values to enumerate: give "
                                                     + ", ".join(ranges) + " as values, or use random, sobol or tpe"))
    trials = trials or document.trials or (grid_size(document.dimensions) if strategy == "grid" else DEFAULT_TRIALS)
    if strategy == "grid" and not found:
        trials = min(trials, grid_size(document.dimensions))
    if not MIN_TRIALS <= trials <= MAX_TRIALS:
        found.append(Problem("trials", trials, f"{MIN_TRIALS} to {MAX_TRIALS} (a grid of one point is no search)"))
    if parallelism < 1:
        found.append(Problem("parallelism", parallelism, "1 or more trials at a time"))
    hyperparameters = {name: values[name] for name in config.TrainingConfig.field_names()}
    context = {name: values[name] for name in CONTEXT_PARAMETERS if name in values and name != "seed"}
    found += spaces.problems(document.dimensions, {**hyperparameters, **context})
    searched = {dimension.name: dimension for dimension in document.dimensions}
    binary_modes = searched["binary_mode"].values if "binary_mode" in searched else (values["binary_mode"],)
    # The document's direction is its metric's: a metric named here comes with its own (or its natural one).
    direction = objective_direction or ("" if objective_metric else document.objective_direction)
    objective, objective_problems = objectives.resolve(
        objective_metric or document.objective_metric, direction,
        eval_metric=values["eval_metric"], binary_modes=binary_modes, eval_metric_searched="eval_metric" in searched)
    found += objective_problems
    if found:
        raise ParameterError(found)
    seed = document.seed if document.seed is not None else values["seed"]
    return Settings(dimensions=document.dimensions, strategy=strategy, trials=trials,
                    first_wave=first_wave_size(trials, parallelism), objective=objective, seed=seed,
                    hyperparameters=hyperparameters, notes=document.notes)


def grid_size(dimensions: tuple[Dimension, ...]) -> int:
    size = 1
    for dimension in dimensions:
        size *= len(dimension.values) if dimension.kind == spaces.CATEGORICAL else 1
    return size


def first_wave_size(trials: int, parallelism: int) -> int:
    """How many trials the first wave runs: about half, rounded to a multiple
    of the parallelism so that neither wave leaves slots idle without need.
    The second wave is chosen knowing the first's results (tpe learns from
    them); neither may be empty (an empty ParallelFor has nothing to collect)."""
    return min(max(parallelism * round(trials / 2 / parallelism), 1), trials - 1)
