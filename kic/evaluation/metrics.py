"""Classification metrics computed from labels and predicted probabilities.

Pure numpy, so evaluation needs no TensorFlow and every number can be checked
against scikit-learn (the tests do, to 1e-6). Conventions, all matching
scikit-learn unless noted:

- Undefined ratios (0/0, e.g. precision of a class that is never predicted)
  are 0.0, like scikit-learn's ``zero_division=0``.
- Multi-class prediction is the arg-max (the lowest index wins a tie).
- Binary mode: the probability is that of the positive class,
  ``class_names[1]``. At the fixed 0.5 threshold an example is positive when
  ``p > 0.5`` (the Keras metrics' rule, and what arg-max over ``[1-p, p]``
  gives); on the curves an example is positive when ``p >= threshold``
  (scikit-learn's rule), so every threshold is one of the scores.
- ``prc`` is average precision (scikit-learn's step-wise definition,
  ``sum_n (R_n - R_{n-1}) * P_n``), not the trapezoidal area, which is
  optimistic.
- ``auc``, ``prc`` and both curves need both classes in ``labels``; with one
  class present they are left out (not set to 0.5), so a quality gate on them
  fails loudly instead of passing or failing on a made-up number.
- ``log_loss`` clips probabilities to ``[eps, 1 - eps]`` with float64's eps,
  like scikit-learn for float64 input.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

_PROBABILITY_TOLERANCE = 1e-3
_ROWS_PER_CHUNK = 4096

# The quality metrics among the scalars, by mode; ``top_{k}_accuracy`` is
# reported too where there are more than k classes. (The scalars also hold
# num_examples and, in binary mode, best_f1_threshold: facts, not qualities.)
QUALITY_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
                   "weighted_recall", "weighted_f1", "log_loss")
BINARY_QUALITY_METRICS = ("precision", "recall", "f1", "auc", "prc", "best_f1", "precision_at_best_f1",
                          "recall_at_best_f1", "true_positives", "false_positives", "true_negatives",
                          "false_negatives")


def top_k_metric(k: int) -> str:
    return f"top_{k}_accuracy"


def most_confused_classes(confusion_matrix, limit: int) -> list[int]:
    """Indices of the ``limit`` classes with the most errors (as true or as
    predicted class), in class order; every class when there are no more."""
    matrix = np.asarray(confusion_matrix, dtype=np.int64)
    if len(matrix) <= limit:
        return list(range(len(matrix)))
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    # A stable sort keeps class order among equal error counts.
    return sorted(int(index) for index in np.argsort(-errors, kind="stable")[:limit])


def quality_metrics(*, binary_mode: bool, top_k: int) -> tuple[str, ...]:
    return QUALITY_METRICS + (BINARY_QUALITY_METRICS if binary_mode else ()) + (top_k_metric(top_k),)


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Everything the report and the quality gate need, JSON-serialisable."""

    scalars: dict[str, float]
    class_names: tuple[str, ...]
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted class
    per_class: list[dict]  # {"class", "precision", "recall", "f1", "support"}
    roc_curve: dict | None  # binary: {"fpr", "tpr", "thresholds"}, equal lengths
    pr_curve: dict | None  # binary: {"precision", "recall", "thresholds"}, equal lengths

    def to_dict(self) -> dict[str, Any]:
        return {
            "scalars": dict(self.scalars),
            "class_names": list(self.class_names),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "per_class": [dict(row) for row in self.per_class],
            "roc_curve": self.roc_curve,
            "pr_curve": self.pr_curve,
        }

    def to_json(self) -> str:
        # Compact: a 1000-class confusion matrix is a million numbers. And
        # allow_nan=False: a NaN that slipped through is a bug, not a value to ship.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        return cls(
            scalars=dict(data["scalars"]),
            class_names=tuple(data["class_names"]),
            confusion_matrix=[list(row) for row in data["confusion_matrix"]],
            per_class=[dict(row) for row in data["per_class"]],
            roc_curve=data.get("roc_curve"),
            pr_curve=data.get("pr_curve"),
        )

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        return cls.from_dict(json.loads(text))

    @property
    def binary(self) -> bool:
        return "true_positives" in self.scalars


def evaluate_predictions(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence | np.ndarray,
    class_names: Sequence[str],
    *,
    binary_mode: bool,
    top_k: int = 5,
    max_curve_points: int = 200,
) -> EvaluationResult:
    """Compute all metrics for one evaluated split.

    ``probabilities`` is ``(n, K)`` softmax rows, or in binary mode the
    positive-class probability as ``(n,)``, ``(n, 1)`` or ``(n, 2)``.
    """
    class_names = tuple(str(name) for name in class_names)
    num_classes = len(class_names)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if max_curve_points < 2:
        raise ValueError(f"max_curve_points must be at least 2, got {max_curve_points}")
    if binary_mode and num_classes != 2:
        raise ValueError(f"binary mode needs exactly 2 class names, got {num_classes}: {class_names}")
    y_true = _validate_labels(labels, num_classes)
    if binary_mode:
        positive_scores = _validate_binary_probabilities(probabilities, len(y_true))
        proba = np.stack([1.0 - positive_scores, positive_scores], axis=1)
        y_pred = (positive_scores > 0.5).astype(np.int64)
    else:
        proba = _validate_multiclass_probabilities(probabilities, len(y_true), num_classes)
        y_pred = np.argmax(proba, axis=1)

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = _per_class_metrics(confusion, class_names)

    scalars: dict[str, float] = {"num_examples": len(y_true)}
    scalars["accuracy"] = float(np.trace(confusion) / len(y_true))
    if num_classes > top_k:
        scalars[top_k_metric(top_k)] = _top_k_accuracy(y_true, proba, top_k)
    scalars.update(_averaged_metrics(per_class))
    scalars["log_loss"] = _log_loss(y_true, proba)

    roc_curve = pr_curve = None
    if binary_mode:
        scalars.update(_binary_counts(confusion, per_class))
        ranking = _BinaryRanking(y_true, positive_scores)
        scalars.update(ranking.best_f1())
        if ranking.both_classes_present:
            scalars["auc"] = ranking.roc_auc()
            scalars["prc"] = ranking.average_precision()
            roc_curve = ranking.roc_curve(max_curve_points)
            pr_curve = ranking.pr_curve(max_curve_points)

    for name, value in scalars.items():
        if not math.isfinite(value):
            raise ArithmeticError(f"metric {name} is not finite ({value}); this is a bug in kic")
    return EvaluationResult(
        scalars=scalars,
        class_names=class_names,
        confusion_matrix=confusion.tolist(),
        per_class=per_class,
        roc_curve=roc_curve,
        pr_curve=pr_curve,
    )


# --- input validation ------------------------------------------------------


def _validate_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    y_true = np.asarray(labels)
    if y_true.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate zero examples: labels is empty")
    if not np.issubdtype(y_true.dtype, np.integer) and not np.all(np.mod(y_true, 1) == 0):
        raise ValueError(f"labels must be integer class indices, got dtype {y_true.dtype}")
    y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got values from {y_true.min()} to {y_true.max()}"
        )
    return y_true


def _check_probability_range(proba: np.ndarray) -> None:
    if not np.all(np.isfinite(proba)):
        raise ValueError("probabilities contain NaN or infinity")
    low, high = float(proba.min()), float(proba.max())
    if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
        raise ValueError(
            f"probabilities must lie in [0, 1], got values from {low:.4g} to {high:.4g}; "
            "pass softmax/sigmoid outputs, not logits"
        )


def _validate_binary_probabilities(probabilities: Sequence | np.ndarray, num_examples: int) -> np.ndarray:
    proba = np.asarray(probabilities, dtype=np.float64)
    if proba.ndim == 2 and proba.shape[1] in (1, 2):
        proba = proba[:, -1]  # the positive class is the last column either way
    if proba.ndim != 1:
        raise ValueError(
            "binary mode expects the positive-class probability with shape (n,), (n, 1) or (n, 2), "
            f"got shape {np.shape(probabilities)}"
        )
    if len(proba) != num_examples:
        raise ValueError(f"{len(proba)} probabilities for {num_examples} labels")
    _check_probability_range(proba)
    return np.clip(proba, 0.0, 1.0)


def _validate_multiclass_probabilities(
    probabilities: Sequence | np.ndarray, num_examples: int, num_classes: int
) -> np.ndarray:
    proba = np.asarray(probabilities, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != num_classes:
        raise ValueError(
            f"expected probabilities of shape ({num_examples}, {num_classes}) for {num_classes} classes, "
            f"got shape {proba.shape}"
        )
    if proba.shape[0] != num_examples:
        raise ValueError(f"{proba.shape[0]} probability rows for {num_examples} labels")
    _check_probability_range(proba)
    row_sums = proba.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=_PROBABILITY_TOLERANCE):
        worst = int(np.argmax(np.abs(row_sums - 1.0)))
        raise ValueError(
            f"probability rows must sum to 1 (softmax output); row {worst} sums to {row_sums[worst]:.6g}"
        )
    return proba


# --- metrics from the confusion matrix -----------------------------------


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _per_class_metrics(confusion: np.ndarray, class_names: tuple[str, ...]) -> list[dict]:
    true_positives = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall
    # but stays defined (0) when both are 0.
    f1 = _safe_divide(2 * true_positives, predicted + support)
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def _averaged_metrics(per_class: list[dict]) -> dict[str, float]:
    support = np.array([row["support"] for row in per_class], dtype=np.float64)
    out = {}
    for metric in ("precision", "recall", "f1"):
        values = np.array([row[metric] for row in per_class])
        out[f"macro_{metric}"] = float(values.mean())
        out[f"weighted_{metric}"] = float(np.dot(values, support) / support.sum())
    return out


def _binary_counts(confusion: np.ndarray, per_class: list[dict]) -> dict[str, float]:
    positive = per_class[1]
    return {
        "precision": positive["precision"],
        "recall": positive["recall"],
        "f1": positive["f1"],
        "true_positives": int(confusion[1, 1]),
        "false_positives": int(confusion[0, 1]),
        "true_negatives": int(confusion[0, 0]),
        "false_negatives": int(confusion[1, 0]),
    }


# --- metrics from the scores ---------------------------------------------


def _top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    # The true class is in the top k when fewer than k classes outrank it.
    # Ties follow scikit-learn (a reversed stable sort: among equal scores the
    # higher class index ranks first). Counting instead of sorting keeps this
    # O(n * K); rows go in chunks to bound memory for ~1000-class models.
    hits = 0
    class_index = np.arange(proba.shape[1])
    for start in range(0, len(y_true), _ROWS_PER_CHUNK):
        rows = proba[start : start + _ROWS_PER_CHUNK]
        labels = y_true[start : start + _ROWS_PER_CHUNK]
        true_scores = rows[np.arange(len(labels)), labels][:, None]
        outranking = (rows > true_scores) | ((rows == true_scores) & (class_index > labels[:, None]))
        hits += int(np.count_nonzero(outranking.sum(axis=1) < k))
    return hits / len(y_true)


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    eps = np.finfo(np.float64).eps
    clipped = np.clip(proba, eps, 1 - eps)
    return float(-np.mean(np.log(clipped[np.arange(len(y_true)), y_true])))


class _BinaryRanking:
    """Cumulative counts at every distinct score, highest score first.

    Row i holds the counts when every example scoring >= thresholds[i] is
    called positive; this is the scikit-learn ``_binary_clf_curve``.
    """

    def __init__(self, y_true: np.ndarray, scores: np.ndarray):
        order = np.argsort(scores, kind="mergesort")[::-1]
        sorted_scores = scores[order]
        sorted_true = y_true[order]
        # The last index of each run of equal scores: tied examples flip together.
        last_of_run = np.r_[np.where(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
        self.tps = np.cumsum(sorted_true)[last_of_run].astype(np.float64)
        self.fps = (last_of_run + 1) - self.tps
        self.thresholds = sorted_scores[last_of_run]
        self.positives = float(self.tps[-1])
        self.negatives = float(self.fps[-1])
        self.both_classes_present = self.positives > 0 and self.negatives > 0

    def best_f1(self) -> dict[str, float]:
        f1 = _safe_divide(2 * self.tps, self.tps + self.fps + self.positives)
        # argmax takes the first maximum, i.e. the highest threshold among
        # ties: the same F1 with the fewest examples called positive.
        best = int(np.argmax(f1))
        return {
            "best_f1": float(f1[best]),
            "best_f1_threshold": float(self.thresholds[best]),
            "precision_at_best_f1": float(_safe_divide(self.tps[best], self.tps[best] + self.fps[best])),
            "recall_at_best_f1": float(_safe_divide(self.tps[best], self.positives)),
        }

    def roc_auc(self) -> float:
        fpr = np.r_[0.0, self.fps / self.negatives]
        tpr = np.r_[0.0, self.tps / self.positives]
        return float(np.trapezoid(tpr, fpr))

    def average_precision(self) -> float:
        precision = self.tps / (self.tps + self.fps)
        recall = self.tps / self.positives
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))

    def roc_curve(self, max_points: int) -> dict:
        # Drop points in the middle of straight segments (scikit-learn's
        # drop_intermediate): they add nothing to the plot.
        keep = _interior_changes(np.diff(self.fps, 2), np.diff(self.tps, 2), len(self.tps))
        fps, tps, thresholds = self.fps[keep], self.tps[keep], self.thresholds[keep]
        # The (0, 0) corner needs a threshold above every score; scikit-learn
        # uses infinity, which JSON cannot hold, so take the next float up.
        corner = np.nextafter(thresholds[0], np.inf)
        fpr = np.r_[0.0, fps / self.negatives]
        tpr = np.r_[0.0, tps / self.positives]
        thresholds = np.r_[corner, thresholds]
        fpr, tpr, thresholds = _downsample((fpr, tpr, thresholds), max_points)
        return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}

    def pr_curve(self, max_points: int) -> dict:
        # Keep the first and last point of each recall level (the vertical
        # drops of the step plot); scikit-learn's drop_intermediate for PR.
        keep = _interior_changes(np.diff(self.tps[:-1]), np.diff(self.tps[1:]), len(self.tps))
        tps, fps, thresholds = self.tps[keep], self.fps[keep], self.thresholds[keep]
        precision = tps / (tps + fps)
        recall = tps / self.positives
        # Ascending thresholds (descending recall), as scikit-learn returns
        # them, minus its artificial (recall 0, precision 1) end point that
        # has no threshold: here all three lists have the same length.
        precision, recall, thresholds = _downsample((precision[::-1], recall[::-1], thresholds[::-1]), max_points)
        return {"precision": precision, "recall": recall, "thresholds": thresholds}


def _interior_changes(first: np.ndarray, second: np.ndarray, length: int) -> np.ndarray:
    """Indices of both end points plus the interior points where either change is non-zero."""
    if length <= 2:
        return np.arange(length)
    return np.flatnonzero(np.r_[True, np.logical_or(first, second), True])


def _downsample(arrays: tuple[np.ndarray, ...], max_points: int) -> tuple[list[float], ...]:
    """Evenly spaced subset keeping both end points; order (hence monotonicity) is kept."""
    length = len(arrays[0])
    if length > max_points:
        index = np.unique(np.round(np.linspace(0, length - 1, max_points)).astype(np.int64))
        arrays = tuple(array[index] for array in arrays)
    return tuple([float(value) for value in array] for array in arrays)


def evaluate_on_classes(
    true_classes: Sequence[str],
    scores: np.ndarray,
    model_class_names: Sequence[str],
    classes: Sequence[str],
    *,
    top_k: int = 5,
) -> EvaluationResult:
    """The metrics of a model on images of ``classes`` only, where the model
    may know other classes too: how a new model and its baseline are compared
    when the class set changed. Each prediction is the model's own arg-max over
    every class it knows; one outside ``classes`` is a mistake, counted in the
    last column of the confusion matrix ("other classes"). Per-class rows and the
    macro and weighted averages cover ``classes``; top-k and log loss use the
    model's own scores (``scores``: [n, len(model_class_names)], each row summing
    to 1; binary mode as [1 - p, p])."""
    classes = tuple(str(name) for name in classes)
    model_index = {name: index for index, name in enumerate(model_class_names)}
    compared_index = {name: index for index, name in enumerate(classes)}
    missing = sorted(set(classes) - set(model_index))
    if missing:
        raise ValueError(f"the model does not know the compared classes {missing}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(true_classes), len(model_class_names)):
        raise ValueError(f"expected scores of shape ({len(true_classes)}, {len(model_class_names)}), got "
                         f"{scores.shape}")
    if len(true_classes) == 0:
        raise ValueError("cannot evaluate zero examples: true_classes is empty")
    y_true = np.array([compared_index[name] for name in true_classes], dtype=np.int64)
    y_model = np.array([model_index[name] for name in true_classes], dtype=np.int64)
    other = len(classes)
    predicted_names = [model_class_names[index] for index in np.argmax(scores, axis=1)]
    y_pred = np.array([compared_index.get(name, other) for name in predicted_names], dtype=np.int64)

    confusion = np.zeros((other + 1, other + 1), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = _per_class_metrics(confusion, (*classes, OTHER_CLASSES))[:other]
    scalars: dict[str, float] = {"num_examples": len(y_true), "accuracy": float(np.trace(confusion) / len(y_true))}
    if scores.shape[1] > top_k:
        scalars[top_k_metric(top_k)] = _top_k_accuracy(y_model, scores, top_k)
    scalars.update(_averaged_metrics(per_class))
    scalars["log_loss"] = _log_loss(y_model, scores)
    return EvaluationResult(scalars=scalars, class_names=(*classes, OTHER_CLASSES),
                            confusion_matrix=confusion.tolist(), per_class=per_class, roc_curve=None, pr_curve=None)


# The column of evaluate_on_classes' confusion matrix for predictions outside the compared classes.
OTHER_CLASSES = "(other classes)"
