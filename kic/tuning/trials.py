"""One trial of a search: plan it, run it, record it; and the pick of the best.

A trial that fails (an error in training, an out-of-memory batch size, a loss
that turned NaN) is recorded as failed, with no objective, rather than raised:
one bad corner of the space must not stop the search. The record goes into
the trial's model folder (``trial.json``) and is returned to the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kic import config, storage
from kic.errors import UserError
from kic.tuning.objective import Objective, finite
from kic.tuning.settings import Settings

SUCCEEDED, FAILED = "succeeded", "failed"
TRIAL_JSON = "trial.json"  # in each trial's model folder
Log = Callable[[str], None]


class TuningError(UserError):
    """A search that produced no usable model."""


@dataclasses.dataclass(frozen=True)
class TrialResult:
    trial: int  # 0-based, in plan order
    wave: int  # 1 or 2
    status: str  # SUCCEEDED or FAILED
    objective: float | None  # the objective's value at the best epoch; None when failed
    hyperparameters: Mapping[str, Any]  # the searched values
    epochs_run: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)  # the best epoch's
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> TrialResult:
        """The inverse of ``to_json``; integers may arrive as floats (a KFP struct's)."""
        values = {field.name: payload[field.name] for field in dataclasses.fields(cls) if field.name in payload}
        values.setdefault("objective", None)
        for name in ("trial", "wave", "epochs_run", "best_epoch"):
            values[name] = int(values.get(name, 0))
        return cls(**values)


# --------------------------------------------------------------------------- planning


def plan(settings: Settings, wave: int, searched: Sequence[Mapping[str, Any]], first_index: int) -> list[dict]:
    """The trials of a wave, as the pipeline's ParallelFor iterates them: each
    with all 25 hyperparameters, checked by the contract, and what it optimises."""
    from kic import parameters

    items = []
    for offset, values in enumerate(searched):
        hyperparameters = {**settings.hyperparameters, **values}
        parameters.validate(hyperparameters, reachability=False)  # the space was checked; this is the guarantee
        items.append({"trial": first_index + offset, "wave": wave, "searched": dict(values),
                      "hyperparameters": config.TrainingConfig.from_dict(hyperparameters).to_dict(),
                      "objective": settings.objective.to_json()})
    return items


def describe(item: Mapping[str, Any]) -> str:
    searched = ", ".join(f"{name}={_short(value)}" for name, value in item["searched"].items())
    return f"trial {int(item['trial'])} (wave {int(item['wave'])}): {searched}"


# --------------------------------------------------------------------------- running


def run(item: Mapping[str, Any], examples_dir: str, model_dir: str, options, log: Log = print) -> TrialResult:
    """Trains one trial into ``model_dir`` (``options``: kic.training.TrainOptions)
    and records it there; never raises for a failed trial."""
    from kic.training import train

    objective = Objective(**item["objective"])
    started = time.perf_counter()
    log(f"tune: {describe(item)}")
    try:
        training_config = config.TrainingConfig.from_dict(item["hyperparameters"])
        result = train(examples_dir, model_dir, training_config, options, log=log)
    except Exception as error:  # noqa: BLE001 (whatever ends a trial is the trial's outcome, recorded below)
        if not isinstance(error, UserError):
            log("".join(traceback.format_exception(error)).rstrip())
        record = _record(item, FAILED, None, started, error=" ".join(f"{type(error).__name__}: {error}".split()))
    else:
        status, value, reason = outcome(result.best_metrics, objective)
        record = _record(item, status, value, started, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                         metrics=result.best_metrics, error=reason)
    os.makedirs(model_dir, exist_ok=True)
    storage.write_text(os.path.join(model_dir, TRIAL_JSON), json.dumps(record.to_json(), indent=2))
    verdict = f"{objective.metric} = {record.objective:.4f}" if record.status == SUCCEEDED else record.error
    log(f"tune: trial {record.trial} {record.status} in {record.seconds:.1f} s: {verdict}")
    return record


def outcome(metrics: Mapping[str, float], objective: Objective) -> tuple[str, float | None, str]:
    """A trained trial's status, objective and, when it failed, why: a loss
    that is not finite means training diverged, whatever the accuracy says."""
    for name in ("loss", "val_loss"):
        if name in metrics and not finite(metrics[name]):
            return FAILED, None, f"training diverged: {name} is {metrics[name]} at the kept epoch"
    value = metrics.get(objective.metric)
    if value is None:
        return FAILED, None, f"training recorded no {objective.metric} (it has {', '.join(sorted(metrics))})"
    if not finite(value):
        return FAILED, None, f"{objective.metric} is {value}"
    return SUCCEEDED, float(value), ""


def _record(item: Mapping[str, Any], status: str, value: float | None, started: float, **fields) -> TrialResult:
    return TrialResult(trial=int(item["trial"]), wave=int(item["wave"]), status=status, objective=value,
                       hyperparameters=dict(item["searched"]), seconds=round(time.perf_counter() - started, 2),
                       **fields)


# --------------------------------------------------------------------------- selection


def collected(payloads: Sequence[Mapping[str, Any]], settings: Settings) -> list[TrialResult]:
    """The trials' records as the pipeline collects them (a KFP struct makes
    every number a float), with the searched values typed again."""
    types = {name: type(value) for name, value in settings.hyperparameters.items()}
    results = []
    for payload in payloads:
        result = TrialResult.from_json(payload)
        typed = {name: config.coerce(value, types[name]) for name, value in result.hyperparameters.items()}
        results.append(dataclasses.replace(result, hyperparameters=typed))
    return results


def best(results: Sequence[TrialResult], objective: Objective) -> TrialResult:
    """The trial with the best objective (the earliest among equals); raises
    TuningError, listing why each failed, when none succeeded."""
    succeeded = [result for result in results if result.status == SUCCEEDED and finite(result.objective)]
    if not succeeded:
        ordered = sorted(results, key=lambda result: result.trial)
        reasons = "; ".join(f"trial {result.trial}: {result.error}" for result in ordered)
        raise TuningError(f"every one of the {len(results)} trials failed, so there is no model to evaluate: "
                          f"{reasons}")
    return min(succeeded, key=lambda result: (objective.sort_key(result.objective), result.trial))


def check_complete(results: Sequence[TrialResult], settings: Settings) -> None:
    """That the collected results are the planned trials, each once (a platform that lost one is a bug)."""
    indices = sorted(result.trial for result in results)
    if indices != list(range(settings.trials)):
        raise RuntimeError(f"collected the results of trials {indices}, planned 0 to {settings.trials - 1}")


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
