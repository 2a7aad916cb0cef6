"""Which hyperparameters each trial gets: the search strategies, from Optuna's samplers.

* random: independent uniform draws (on each range's scale), seeded.
* sobol: a scrambled Sobol sequence (scipy's, through Optuna's QMC sampler):
  points spread evenly over the space, so few trials still cover it.
* tpe: the Tree-structured Parzen Estimator. The first wave is random; the
  second is chosen from the first's results (a "constant liar" keeps the
  points of one wave apart, since they are chosen before any of them runs).
* grid: every combination of the values, in a seeded random order (a
  categorical space only).

Optuna only samples here: each wave is planned by replaying the seed (and, for
tpe, the first wave's results) into an in-memory study, so the same inputs
always give the same trials, in a pipeline step or on this machine.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from kic.tuning import space as spaces
from kic.tuning.objective import MAXIMIZE
from kic.tuning.settings import Settings
from kic.tuning.space import Dimension

SIGNIFICANT_DIGITS = 6  # sampled floats are rounded to this many, for legible trials and reports
TPE_CANDIDATES = 64  # candidates TPE scores per suggestion (Optuna's default is 24)


def first_wave(settings: Settings) -> list[dict[str, Any]]:
    """The searched values of the first wave's trials."""
    return _sample(settings, settings.first_wave)


def second_wave(settings: Settings, completed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The searched values of the second wave's trials; ``completed`` are the
    first wave's results (``trial``, ``hyperparameters``, ``status``, ``objective``),
    which tpe learns from and the other strategies need not."""
    count = settings.trials - settings.first_wave
    if settings.strategy != "tpe":
        return _sample(settings, settings.trials)[settings.first_wave:]
    optuna = _optuna()
    study = optuna.create_study(direction=_direction(settings), sampler=optuna.samplers.TPESampler(
        seed=settings.seed, n_startup_trials=1, n_ei_candidates=TPE_CANDIDATES, multivariate=True,
        constant_liar=True))
    distributions = _distributions(settings.dimensions)
    for result in sorted(completed, key=lambda result: int(result["trial"])):
        succeeded = result.get("status") == "succeeded" and result.get("objective") is not None
        study.add_trial(optuna.trial.create_trial(
            params={dimension.name: _internal(dimension, result["hyperparameters"][dimension.name])
                    for dimension in settings.dimensions},
            distributions=distributions,
            value=float(result["objective"]) if succeeded else None,
            state=optuna.trial.TrialState.COMPLETE if succeeded else optuna.trial.TrialState.FAIL))
    return [_values(settings.dimensions, study.ask(distributions).params) for _ in range(count)]


def _sample(settings: Settings, count: int) -> list[dict[str, Any]]:
    """The first ``count`` trials of a strategy that needs no results: the same seed gives the same sequence."""
    optuna = _optuna()
    study = optuna.create_study(direction=_direction(settings), sampler=_sampler(settings))
    distributions = _distributions(settings.dimensions)
    return [_values(settings.dimensions, study.ask(distributions).params) for _ in range(count)]


def _sampler(settings: Settings):
    optuna = _optuna()
    samplers = optuna.samplers
    if settings.strategy == "sobol":
        return samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=settings.seed)
    if settings.strategy == "grid":
        return samplers.GridSampler({dimension.name: list(dimension.values) for dimension in settings.dimensions},
                                    seed=settings.seed)
    # random, and tpe's first wave (TPE samples at random until it has results).
    return samplers.RandomSampler(seed=settings.seed)


def _direction(settings: Settings) -> str:
    return "maximize" if settings.objective.direction == MAXIMIZE else "minimize"


def _distributions(dimensions: Sequence[Dimension]) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions = {}
    for dimension in dimensions:
        if dimension.kind == spaces.CATEGORICAL:
            distributions[dimension.name] = CategoricalDistribution(list(dimension.values))
        elif dimension.kind == spaces.INT:
            distributions[dimension.name] = IntDistribution(int(dimension.low), int(dimension.high),
                                                            log=dimension.scale == spaces.LOG)
        elif dimension.scale == spaces.REVERSE_LOG:
            # Dense near 1: the distance to 1 on a log scale.
            distributions[dimension.name] = FloatDistribution(1.0 - dimension.high, 1.0 - dimension.low, log=True)
        else:
            distributions[dimension.name] = FloatDistribution(dimension.low, dimension.high,
                                                              log=dimension.scale == spaces.LOG)
    return distributions


def _values(dimensions: Sequence[Dimension], params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's parameters as hyperparameter values."""
    values = {}
    for dimension in dimensions:
        value = params[dimension.name]
        if dimension.kind == spaces.FLOAT:
            if dimension.scale == spaces.REVERSE_LOG:
                value = 1.0 - value
            value = min(max(_round(value), dimension.low), dimension.high)
        elif dimension.kind == spaces.INT:
            value = int(value)
        values[dimension.name] = value
    return values


def _internal(dimension: Dimension, value: Any) -> Any:
    """A hyperparameter value as Optuna's parameter (the inverse of ``_values``)."""
    if dimension.kind == spaces.INT:
        return int(value)
    if dimension.kind == spaces.FLOAT:
        value = float(value)
        if dimension.scale == spaces.REVERSE_LOG:
            return min(max(1.0 - value, 1.0 - dimension.high), 1.0 - dimension.low)
        return value
    from kic import config

    return config.coerce(value, type(dimension.values[0]))


def _round(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna
