"""What a tuning run optimises: a metric of training's best epoch, and whether more or less is better.

The metric is a key of the training history (``val_accuracy``, ``val_loss``,
``accuracy``, ...), read from the trained model's record of its best epoch, so
a trial's objective is the value of the model that would be exported. The
reference's names are accepted as well: ``validation:accuracy`` is
``val_accuracy``, ``train:loss`` is ``loss``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from kic import config
from kic.errors import Problem

MAXIMIZE, MINIMIZE = "maximize", "minimize"
DIRECTIONS = (MAXIMIZE, MINIMIZE)
_REFERENCE_PREFIXES = {"validation:": "val_", "train:": ""}


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    def better(self, value: float, than: float) -> bool:
        return value > than if self.direction == MAXIMIZE else value < than

    def sort_key(self, value: float) -> float:
        """Ascending order puts the best first."""
        return -value if self.direction == MAXIMIZE else value

    def to_json(self) -> dict:
        return {"metric": self.metric, "direction": self.direction}


def history_metrics(binary_mode: bool) -> tuple[str, ...]:
    """The metrics training records in this mode, for training and validation data."""
    names = ("loss", *(config.EVAL_METRICS if binary_mode else ("accuracy",)))
    return (*(f"val_{name}" for name in names), *names)


def canonical(metric: str) -> str:
    """Our name for a metric named ours or the reference's way."""
    metric = metric.strip()
    for prefix, ours in _REFERENCE_PREFIXES.items():
        if metric.lower().startswith(prefix):
            return ours + metric[len(prefix):]
    return metric


def resolve(metric: str, direction: str, *, eval_metric: str, binary_modes: Iterable[bool],
            eval_metric_searched: bool) -> tuple[Objective | None, list[Problem]]:
    """The objective that ``metric`` and ``direction`` name (either may be
    empty: the monitored metric, val_<eval_metric>; maximised unless it is a
    loss), checked against every binary_mode a trial can have."""
    problems = []
    binary_modes = sorted(set(binary_modes))
    if not metric and eval_metric_searched:
        problems.append(Problem("objective_metric", "", "name one: eval_metric is searched, so the monitored metric "
                                                        "differs between trials and their values do not compare"))
    metric = canonical(metric) if metric else f"val_{eval_metric}"
    for binary_mode in binary_modes:
        choices = history_metrics(binary_mode)
        if metric not in choices:
            mode = "binary mode" if binary_mode else "multi-class mode (binary_mode=False)"
            problems.append(Problem("objective_metric", metric, f"a metric training records in {mode}: "
                                                                + ", ".join(choices)))
            break
    direction = direction.strip().lower() or (MINIMIZE if metric.endswith("loss") else MAXIMIZE)
    if direction not in DIRECTIONS:
        problems.append(Problem("objective_direction", direction, "maximize or minimize (empty: minimize for a loss, "
                                                                  "maximize otherwise)"))
    if problems:
        return None, problems
    return Objective(metric, direction), []


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
