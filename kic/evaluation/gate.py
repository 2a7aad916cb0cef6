"""The quality gate: decide whether a trained model is good enough to ship.

TFX calls the outcome a "blessing": the model passes an absolute bar and,
when an earlier (baseline) model is given, does not regress against it by more
than an allowed margin. Downstream steps (export, deploy) only run for a
blessed model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from kic.errors import DataError, ParameterError, Problem
from kic.evaluation.metrics import quality_metrics

# Metrics where a smaller value is the better model; every comparison flips.
LOWER_IS_BETTER = frozenset({"log_loss", "false_positives", "false_negatives"})

# Comparisons allow this much float slack, so a regression of exactly the
# allowed margin (0.91 - 0.01 is not exactly 0.90 in binary) still passes.
_TOLERANCE = 1e-9

# The default max_regression. Zero tolerance would block a retrained model for
# noise: two models judged on the same n test images differ by chance too. The
# binomial standard error of an accuracy p on n images is sqrt(p(1-p)/n): 0.0095
# at p=0.9, n=1,000 (0.013 at n=500); retraining the same data with another
# seed or on a GPU moves test accuracy by about as much. One point of accuracy
# (or of F1, AUC) is within that noise, and a model worse by more is not shipped.
DEFAULT_MAX_REGRESSION = 0.01


@dataclasses.dataclass(frozen=True)
class Blessing:
    """The verdict, with one human-readable sentence per rule checked."""

    blessed: bool
    reasons: tuple[str, ...]
    metric: str
    value: float
    threshold: float
    baseline_value: float | None
    # The new model's value on the images it was compared on with the baseline:
    # ``value`` unless the class set changed (then, the classes both know).
    compared_value: float | None = None
    max_regression: float | None = None
    baseline_model: str = ""
    added_classes: tuple[str, ...] = ()  # in the data, unknown to the baseline
    removed_classes: tuple[str, ...] = ()  # known to the baseline, gone from the data

    @property
    def regression(self) -> float | None:
        """How much worse than the baseline (negative: better), in the metric's units."""
        if self.baseline_value is None or self.compared_value is None:
            return None
        change = self.compared_value - self.baseline_value
        return change if is_lower_better(self.metric) else -change

    def summary(self) -> str:
        """One line for a person: what happens to the model, and why."""
        if self.blessed:
            return "blessed: " + " ".join(reason.removeprefix("Passed: ") for reason in self.reasons)
        failed = [reason.removeprefix("Failed: ") for reason in self.reasons if reason.startswith("Failed")]
        baseline = f" (baseline: {self.baseline_model})" if self.baseline_model else ""
        return "not exported: " + " ".join(failed) + baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "blessed": self.blessed,
            "summary": self.summary(),
            "reasons": list(self.reasons),
            "metric": self.metric,
            "value": _json_number(self.value),
            "threshold": _json_number(self.threshold),
            "baseline_value": _json_number(self.baseline_value),
            "compared_value": _json_number(self.compared_value),
            "regression": _json_number(self.regression),
            "max_regression": self.max_regression,
            "baseline_model": self.baseline_model,
            "added_classes": list(self.added_classes),
            "removed_classes": list(self.removed_classes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        data = json.loads(text)
        return cls(
            blessed=bool(data["blessed"]),
            reasons=tuple(data["reasons"]),
            metric=data["metric"],
            value=math.nan if data["value"] is None else float(data["value"]),
            threshold=float(data["threshold"]),
            baseline_value=None if data["baseline_value"] is None else float(data["baseline_value"]),
            compared_value=None if data.get("compared_value") is None else float(data["compared_value"]),
            max_regression=data.get("max_regression"),
            baseline_model=data.get("baseline_model", ""),
            added_classes=tuple(data.get("added_classes", ())),
            removed_classes=tuple(data.get("removed_classes", ())),
        )


def is_lower_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def option_problems(*, metric: str, minimum: float, max_regression: float, binary_mode: bool,
                    top_k: int) -> list[Problem]:
    """The gate's options, checked before any step runs: a metric evaluation
    reports in this mode (empty: the monitored one), finite bounds, and a
    threshold that some model could meet."""
    problems = []
    if metric:
        choices = quality_metrics(binary_mode=binary_mode, top_k=top_k)
        if metric not in choices:
            mode = "binary mode" if binary_mode else "multi-class mode (binary_mode=False)"
            problems.append(Problem("gate_metric", metric, f"a metric of {mode}: empty (the monitored metric), "
                                                           + ", ".join(choices)))
    if isinstance(minimum, bool) or not isinstance(minimum, int | float) or not math.isfinite(minimum):
        problems.append(Problem("gate_minimum", minimum, "a finite number"))
    elif metric == "log_loss" and minimum <= 0:
        problems.append(Problem("gate_minimum", minimum, "for log_loss the threshold is a maximum, and no model "
                                                         "has a log loss of 0 or less"))
    if (isinstance(max_regression, bool) or not isinstance(max_regression, int | float)
            or not math.isfinite(max_regression) or max_regression < 0):
        problems.append(Problem("max_regression", max_regression, "a finite number >= 0"))
    return problems


def decide(
    metrics: Mapping[str, float],
    *,
    metric: str,
    minimum: float,
    baseline_metrics: Mapping[str, float] | None = None,
    max_regression: float = 0.0,
    compared_metrics: Mapping[str, float] | None = None,
    baseline_model: str = "",
    added_classes: tuple[str, ...] = (),
    removed_classes: tuple[str, ...] = (),
    allow_removed_classes: bool = False,
    compared_on: str = "",
) -> Blessing:
    """Bless the model when ``metric`` clears ``minimum`` and has not regressed.

    For a lower-is-better metric (see ``LOWER_IS_BETTER``) ``minimum`` acts as
    a ceiling and a regression is an increase. ``max_regression`` is an
    absolute margin in the metric's own units.

    When the class set changed since the baseline, ``compared_metrics`` are
    the new model's on the images ``compared_on`` describes (those of the
    classes both models know), as ``baseline_metrics`` are the baseline's; a
    class of the baseline's gone from the data (``removed_classes``) fails
    the gate unless ``allow_removed_classes``.
    """
    if max_regression < 0 or not math.isfinite(max_regression):
        raise ParameterError([Problem("max_regression", max_regression, "a finite number >= 0")])
    if not math.isfinite(minimum):
        raise ParameterError([Problem("gate_minimum", minimum, f"a finite threshold for {metric}")])
    value = _look_up(metrics, metric, "the evaluated model's metrics")
    lower_is_better = is_lower_better(metric)

    reasons = []
    passed_threshold, sentence = _check_threshold(metric, value, minimum, lower_is_better)
    reasons.append(sentence)
    blessed = passed_threshold

    baseline_value = compared_value = None
    if baseline_metrics is not None:
        compared = value if compared_metrics is None else compared_metrics.get(metric)
        if metric in baseline_metrics:
            baseline_value = _look_up(baseline_metrics, metric, "the baseline model's metrics")
        if compared is None or baseline_value is None:
            # Binary-only metrics exist only on the whole, unchanged class set.
            where = f" {compared_on}" if compared_on else ""
            reasons.append(f"Failed: {metric} cannot be compared with the baseline{where}: one of the two "
                           "evaluations has no such metric; gate on accuracy or macro_f1, or set "
                           "baseline_model_uri=none.")
            blessed = False
            baseline_value = None
        else:
            compared_value, baseline_value = float(compared), float(baseline_value)
            passed_baseline, sentence = _check_baseline(metric, compared_value, baseline_value, max_regression,
                                                        lower_is_better, compared_on)
            reasons.append(sentence)
            blessed = blessed and passed_baseline
        if removed_classes:
            names = ", ".join(removed_classes)
            if allow_removed_classes:
                reasons.append(f"Passed: the baseline's classes {names} are not in the data any more, which "
                               "allow_removed_classes allows.")
            else:
                reasons.append(f"Failed: the baseline's classes {names} are not in the data any more: the new "
                               "model cannot recognise them; set allow_removed_classes=true to export it anyway.")
                blessed = False

    return Blessing(
        blessed=blessed,
        reasons=tuple(reasons),
        metric=metric,
        value=value,
        threshold=float(minimum),
        baseline_value=baseline_value,
        compared_value=compared_value,
        max_regression=float(max_regression) if baseline_metrics is not None else None,
        baseline_model=baseline_model,
        added_classes=tuple(added_classes),
        removed_classes=tuple(removed_classes),
    )


def _look_up(metrics: Mapping[str, float], metric: str, whose: str) -> float:
    if metric not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise DataError(f"metric {metric!r} is not among {whose}; available: {available}")
    value = metrics[metric]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"metric {metric!r} in {whose} is not a number: {value!r}")
    return float(value)


def _check_threshold(metric: str, value: float, threshold: float, lower_is_better: bool) -> tuple[bool, str]:
    if math.isnan(value):
        return False, f"Failed: {metric} is NaN, so it cannot meet the threshold of {threshold:.6g}."
    if lower_is_better:
        passed = value <= threshold + _TOLERANCE
        relation = "is at most" if passed else "is above"
        bound = "maximum"
    else:
        passed = value >= threshold - _TOLERANCE
        relation = "is at least" if passed else "is below"
        bound = "minimum"
    verdict = "Passed" if passed else "Failed"
    return passed, f"{verdict}: {metric} = {value:.6g} {relation} the required {bound} of {threshold:.6g}."


def _check_baseline(
    metric: str, value: float, baseline: float, max_regression: float, lower_is_better: bool, compared_on: str = ""
) -> tuple[bool, str]:
    if math.isnan(value):
        return False, f"Failed: {metric} is NaN, so it cannot be compared with the baseline's {baseline:.6g}."
    where = f" {compared_on}" if compared_on else ""
    # Positive regression = worse than the baseline, whichever direction is better.
    regression = value - baseline if lower_is_better else baseline - value
    passed = regression <= max_regression + _TOLERANCE
    verdict = "Passed" if passed else "Failed"
    if regression <= 0:
        change = f"is no worse than the baseline's {baseline:.6g}"
    else:
        change = f"is worse than the baseline's {baseline:.6g} by {regression:.6g}"
    allowance = "within" if passed else "more than"
    return passed, (
        f"{verdict}: {metric} = {value:.6g}{where} {change}, "
        f"{allowance} the allowed regression of {max_regression:.6g}."
    )


def _json_number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value
