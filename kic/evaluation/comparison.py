"""A new model against its baseline on the same test images, and what changed
in the data since the baseline was trained.

With the same classes both are judged on every image of the split, with the
same metrics as the evaluation itself. When the class set changed, both are
judged on the images of the classes both know, each predicting over every
class it knows (a prediction of a class the other does not know is a mistake:
``metrics.evaluate_on_classes``); the classes that appeared and disappeared are
listed, and a disappeared one is for the gate to rule on (``gate.decide``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kic.evaluation.metrics import EvaluationResult, evaluate_on_classes

# Shown side by side, in this order, where both evaluations have them.
COMPARED_METRICS = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "log_loss", "auc",
                    "prc", "precision", "recall", "f1")
BIGGEST_REGRESSIONS = 10
NAMED_CLASSES = 8  # a sentence names the compared classes up to this many


@dataclasses.dataclass(frozen=True)
class Comparison:
    baseline_model: str  # as the user knows it: its URI, and whether LATEST named it
    new: EvaluationResult | None  # on the compared images; None when no image could be compared
    baseline: EvaluationResult | None
    compared_on: str  # a phrase: "on the same 120 test images"
    added_classes: tuple[str, ...]
    removed_classes: tuple[str, ...]
    data_changes: DataChanges

    @property
    def new_scalars(self) -> dict[str, float]:
        return dict(self.new.scalars) if self.new else {}

    @property
    def baseline_scalars(self) -> dict[str, float]:
        return dict(self.baseline.scalars) if self.baseline else {}

    def headline(self) -> list[tuple[str, float, float, float]]:
        """(metric, new, baseline, change) for the metrics both have."""
        new, old = self.new_scalars, self.baseline_scalars
        names = [name for name in COMPARED_METRICS if name in new and name in old]
        names += sorted(name for name in new if name.startswith("top_") and name in old)
        return [(name, new[name], old[name], new[name] - old[name]) for name in names]

    def per_class_f1(self) -> list[dict[str, Any]]:
        """Each compared class's F1, new and baseline, the biggest drop first."""
        if not (self.new and self.baseline):
            return []
        old = {row["class"]: row for row in self.baseline.per_class}
        rows = [{"class": row["class"], "f1": row["f1"], "baseline_f1": old[row["class"]]["f1"],
                 "change": row["f1"] - old[row["class"]]["f1"], "support": row["support"]}
                for row in self.new.per_class if row["class"] in old]
        return sorted(rows, key=lambda row: (row["change"], row["class"]))

    def biggest_regressions(self, limit: int = BIGGEST_REGRESSIONS) -> list[dict[str, Any]]:
        return [row for row in self.per_class_f1() if row["change"] < 0][:limit]

    def ui_metrics(self) -> dict[str, float]:
        """For the KFP/Vertex UI: each headline metric, the baseline's and the change, side by side."""
        values: dict[str, float] = {}
        for name, new, old, change in self.headline():
            values.update({f"new_{name}": new, f"baseline_{name}": old, f"{name}_change": change})
        if self.new:
            values["compared_images"] = self.new.scalars["num_examples"]
        values.update(added_classes=len(self.added_classes), removed_classes=len(self.removed_classes))
        return values

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_model": self.baseline_model, "compared_on": self.compared_on,
                "added_classes": list(self.added_classes), "removed_classes": list(self.removed_classes),
                "headline": [{"metric": name, "new": new, "baseline": old, "change": change}
                             for name, new, old, change in self.headline()],
                "per_class_f1": self.per_class_f1(), "data_changes": self.data_changes.to_dict()}


@dataclasses.dataclass(frozen=True)
class DataChanges:
    """Images per class (every split together) in the baseline's training data
    and in this run's, from the model info and the data report. Counts only:
    an image replaced by another of its class changes nothing here."""

    rows: tuple[dict[str, Any], ...]  # {"class", "baseline", "now", "change"}; None where a side is not known
    known: bool  # whether the baseline recorded its data (kic models from before it did not)

    @property
    def total_baseline(self) -> int:
        return sum(row["baseline"] or 0 for row in self.rows)

    @property
    def total_now(self) -> int:
        return sum(row["now"] or 0 for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"known": self.known, "per_class": list(self.rows), "total_baseline": self.total_baseline,
                "total_now": self.total_now}


def data_changes(now: Mapping[str, Mapping[str, int]], baseline: Mapping[str, Mapping[str, int]],
                 class_names: Sequence[str], baseline_class_names: Sequence[str]) -> DataChanges:
    """What changed in the data since the baseline's (both class -> split -> count)."""
    names = list(class_names) + [name for name in baseline_class_names if name not in class_names]
    rows = []
    for name in names:
        current = sum(now.get(name, {}).values()) if now else None
        before = sum(baseline.get(name, {}).values()) if baseline else None
        rows.append({"class": name, "baseline": before, "now": current,
                     "change": None if before is None or current is None else current - before})
    return DataChanges(rows=tuple(rows), known=bool(baseline))


def compare(*, labels: np.ndarray, class_names: Sequence[str], new_result: EvaluationResult, new_scores: np.ndarray,
            baseline_result: EvaluationResult | None, baseline_scores: np.ndarray,
            baseline_class_names: Sequence[str], baseline_model: str, split: str, top_k: int,
            data_now: Mapping[str, Mapping[str, int]], data_baseline: Mapping[str, Mapping[str, int]]) -> Comparison:
    """``labels`` index ``class_names`` (the data's, and the new model's); each
    model's ``scores`` are [n, its classes]. ``baseline_result`` is the
    baseline's own evaluation, given when it knows the very same classes."""
    added = tuple(name for name in class_names if name not in baseline_class_names)
    removed = tuple(name for name in baseline_class_names if name not in class_names)
    changes = data_changes(data_now, data_baseline, class_names, baseline_class_names)
    if tuple(class_names) == tuple(baseline_class_names) and baseline_result is not None:
        return Comparison(baseline_model, new_result, baseline_result, f"on the same {len(labels)} {split} images",
                          added, removed, changes)
    shared = [name for name in class_names if name in baseline_class_names]
    true_classes = np.array(class_names, dtype=object)[labels] if len(labels) else np.array([], dtype=object)
    kept = np.isin(true_classes, shared)
    if not kept.any():
        return Comparison(baseline_model, None, None, f"on the {split} images: the two models share no class",
                          added, removed, changes)
    shown = [name for name in shared if name in set(true_classes[kept])]
    new = evaluate_on_classes(list(true_classes[kept]), new_scores[kept], class_names, shown, top_k=top_k)
    old = evaluate_on_classes(list(true_classes[kept]), baseline_scores[kept], baseline_class_names, shown,
                              top_k=top_k)
    named = f" ({', '.join(shown)})" if len(shown) <= NAMED_CLASSES else ""
    phrase = f"on the {int(kept.sum())} {split} images of the {len(shown)} classes both models know{named}"
    return Comparison(baseline_model, new, old, phrase, added, removed, changes)
