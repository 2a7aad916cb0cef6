"""Human-readable evaluation reports: one self-contained HTML page and a Markdown summary.

Both are blocks rendered by ``kic.reports``, which escapes every class name,
model URI and reason on the way out and inlines the plots and example images.

Plots use ``matplotlib.figure.Figure`` directly rather than pyplot: no global
figure registry and no backend switch, so rendering is headless and safe to
call from several threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kic import reports
from kic.evaluation.comparison import Comparison
from kic.evaluation.gate import Blessing
from kic.evaluation.metrics import EvaluationResult, most_confused_classes
from kic.reports import Heading, Paragraph, Strong, Table

# Beyond this many classes the confusion-matrix plot shows only the classes
# with the most errors; the full matrix stays in evaluation.json.
MAX_CONFUSION_CLASSES = 50
# Cells are annotated with their counts only while the numbers stay legible.
MAX_ANNOTATED_CLASSES = 15
MAX_TICK_LABEL_CHARS = 24
MAX_MARKDOWN_CLASS_ROWS = 20

# The metrics shown up front, in this order, when present.
HEADLINE_METRICS = (
    "accuracy",
    "top_5_accuracy",
    "auc",
    "prc",
    "precision",
    "recall",
    "f1",
    "best_f1",
    "best_f1_threshold",
    "macro_f1",
    "weighted_f1",
    "log_loss",
    "num_examples",
)

# --- public API ------------------------------------------------------------


def render_html(
    result: EvaluationResult,
    *,
    title: str,
    blessing: Blessing | None = None,
    history: dict[str, list[float]] | None = None,
    misclassified: list[dict] | None = None,
    comparison: Comparison | None = None,
) -> str:
    """The full report as one HTML document with everything inline.

    ``misclassified`` items hold ``image`` (encoded bytes), ``true``,
    ``predicted`` and ``confidence``; the caller chooses how many to pass.
    """
    blocks: list[reports.Block] = []
    if blessing is not None:
        blocks.append(_verdict_box(blessing))
    if comparison is not None:
        blocks += _comparison_page(comparison)
    blocks += [Heading("Headline metrics"), _metrics_table(_headline_metrics(result)),
               Heading("Confusion matrix"), *_confusion_matrix(result)]
    if result.roc_curve is not None and result.pr_curve is not None:
        blocks += [Heading("ROC and precision-recall curves"),
                   reports.Picture(_plot_curves(result), "ROC and precision-recall curves")]
    blocks += [Heading("Per-class metrics (worst F1 first)"), _per_class_table(_worst_first(result.per_class))]
    if history:
        blocks += [Heading("Training curves"), reports.Picture(_plot_history(history), "training curves")]
    if misclassified:
        blocks += [Heading("Misclassified examples (most confident first)"), _misclassified(misclassified)]
    blocks += [Heading("All metrics"), _metrics_table(sorted(result.scalars.items()))]
    return reports.render_html(reports.Report(title, blocks))


def render_markdown(result: EvaluationResult, *, blessing: Blessing | None = None,
                    comparison: Comparison | None = None) -> str:
    """A short summary for the KFP UI: verdict, the baseline side by side,
    headline metrics, worst classes."""
    blocks: list[reports.Block] = []
    if blessing is not None:
        verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"
        blocks.append(Paragraph([Strong(f"Verdict: {verdict}"), f" (gate on {blessing.metric})"]))
        if not blessing.blessed:
            summary = blessing.summary()
            blocks.append(Paragraph(Strong(summary[:1].upper() + summary[1:])))
        blocks.append(reports.Bullets(blessing.reasons))
    if comparison is not None:
        blocks += _comparison_summary(comparison)
    blocks += [Heading("Headline metrics"), _metrics_table(_headline_metrics(result)),
               Heading("Per-class metrics (worst F1 first)")]
    rows = _worst_first(result.per_class)
    if len(rows) > MAX_MARKDOWN_CLASS_ROWS:
        blocks.append(Paragraph(f"Showing the {MAX_MARKDOWN_CLASS_ROWS} worst of {len(rows)} classes."))
    blocks.append(_per_class_table(rows[:MAX_MARKDOWN_CLASS_ROWS]))
    return reports.render_markdown(reports.Report("Evaluation summary", blocks))


# --- pieces ----------------------------------------------------------------


def _verdict_box(blessing: Blessing) -> reports.Box:
    style, verdict = ("passed", "BLESSED") if blessing.blessed else ("failed", "NOT BLESSED")
    return reports.Box(style, [Paragraph([Strong(f"Quality gate: {verdict}"), " (metric ",
                                          reports.Code(blessing.metric), ")"]),
                               reports.Bullets(blessing.reasons)])


def _comparison_summary(comparison: Comparison) -> list[reports.Block]:
    blocks: list[reports.Block] = [Heading("Against the baseline"),
                                   Paragraph(f"Baseline: {comparison.baseline_model}, compared "
                                             f"{comparison.compared_on}."),
                                   reports.Bullets(_class_change_sentences(comparison))]
    if comparison.headline():
        blocks.append(_headline_comparison(comparison))
    regressions = comparison.biggest_regressions()
    if regressions:
        blocks += [Heading("Biggest per-class regressions (F1)", 3), _per_class_comparison(regressions)]
    blocks.append(Heading("Data since the baseline", 3))
    changes = comparison.data_changes
    if not changes.known:
        return [*blocks, Paragraph(UNKNOWN_BASELINE_DATA)]
    changed = [row for row in changes.rows if row["change"] != 0]
    blocks += [Paragraph(f"Images: {changes.total_baseline} then, {changes.total_now} now "
                         f"({changes.total_now - changes.total_baseline:+d})."),
               _data_changes(changed[:MAX_MARKDOWN_CLASS_ROWS] if changed else
                             [{"class": "(every class)", "baseline": "same", "now": "same", "change": 0}])]
    if len(changed) > MAX_MARKDOWN_CLASS_ROWS:
        blocks.append(Paragraph(f"{len(changed) - MAX_MARKDOWN_CLASS_ROWS} more changed classes in the HTML report."))
    return blocks


def _comparison_page(comparison: Comparison) -> list[reports.Block]:
    blocks: list[reports.Block] = [Heading("Against the baseline"),
                                   Paragraph(["Baseline ", reports.Code(comparison.baseline_model), ", compared ",
                                              comparison.compared_on, "."]),
                                   reports.Bullets(_class_change_sentences(comparison))]
    if comparison.headline():
        blocks.append(_headline_comparison(comparison))
    per_class = comparison.per_class_f1()
    if per_class:
        blocks += [Heading("Per-class F1 against the baseline (biggest drop first)", 3),
                   _per_class_comparison(per_class)]
    blocks.append(Heading("Data since the baseline", 3))
    changes = comparison.data_changes
    if not changes.known:
        return [*blocks, Paragraph(UNKNOWN_BASELINE_DATA, note=True)]
    return [*blocks,
            Paragraph(f"Images (every split): {changes.total_baseline} then, {changes.total_now} now "
                      f"({changes.total_now - changes.total_baseline:+d}). Net counts per class: an image replaced "
                      "by another of its class is not seen here."),
            _data_changes(changes.rows)]


UNKNOWN_BASELINE_DATA = "The baseline's model info does not record its training data (a model from an earlier kic)."


def _headline_comparison(comparison: Comparison) -> Table:
    return Table(("Metric", "New", "Baseline", "Change"),
                 [(name, f"{new:.4f}", f"{old:.4f}", f"{change:+.4f}")
                  for name, new, old, change in comparison.headline()], numeric=(1, 2, 3))


def _per_class_comparison(rows: list[dict]) -> Table:
    return Table(("Class", "New F1", "Baseline F1", "Change", "Support"),
                 [(row["class"], f"{row['f1']:.4f}", f"{row['baseline_f1']:.4f}", f"{row['change']:+.4f}",
                   row["support"]) for row in rows], numeric=(1, 2, 3, 4))


def _data_changes(rows: list[dict]) -> Table:
    return Table(("Class", "Baseline", "Now", "Change"),
                 [(row["class"], _count(row["baseline"]), _count(row["now"]), _change(row["change"]))
                  for row in rows], numeric=(1, 2, 3))


def _class_change_sentences(comparison: Comparison) -> list[str]:
    sentences = []
    if comparison.added_classes:
        sentences.append("Classes new since the baseline (it never saw them): " + ", ".join(comparison.added_classes))
    if comparison.removed_classes:
        sentences.append("Classes of the baseline gone from the data: " + ", ".join(comparison.removed_classes))
    return sentences


def _count(value: int | str | None) -> str:
    return "?" if value is None else str(value)


def _change(value: int | None) -> str:
    return "?" if value is None else f"{value:+d}"


def _format_number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return str(int(value))
    return f"{value:.4f}"


def _headline_metrics(result: EvaluationResult) -> list[tuple[str, float]]:
    scalars = result.scalars
    headline = [name for name in HEADLINE_METRICS if name in scalars]
    # top_k may be any k; show whichever one was computed.
    headline += [name for name in scalars if name.startswith("top_") and name not in headline]
    return [(name, scalars[name]) for name in headline]


def _metrics_table(items: Sequence[tuple[str, float]]) -> Table:
    return Table(("Metric", "Value"), [(name, _format_number(value)) for name, value in items], numeric=(1,))


def _worst_first(per_class: list[dict]) -> list[dict]:
    return sorted(per_class, key=lambda row: (row["f1"], row["recall"], row["class"]))


def _per_class_table(rows: list[dict]) -> Table:
    return Table(("Class", "Precision", "Recall", "F1", "Support"),
                 [(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                   row["support"]) for row in rows], numeric=(1, 2, 3, 4))


def _confusion_matrix(result: EvaluationResult) -> list[reports.Block]:
    matrix = np.asarray(result.confusion_matrix, dtype=np.int64)
    shown = most_confused_classes(matrix, MAX_CONFUSION_CLASSES)
    blocks: list[reports.Block] = []
    if len(shown) < len(result.class_names):
        blocks.append(Paragraph(f"Showing the {len(shown)} of {len(result.class_names)} classes with the most "
                                "errors; the full matrix is in the evaluation JSON.", note=True))
    names = [result.class_names[i] for i in shown]
    return [*blocks, reports.Picture(_plot_confusion_matrix(matrix[np.ix_(shown, shown)], names), "confusion matrix")]


def _misclassified(misclassified: list[dict]) -> reports.Figures:
    figures = []
    for item in sorted(misclassified, key=lambda item: float(item["confidence"]), reverse=True):
        true, predicted = item["true"], item["predicted"]
        figures.append(reports.Figure(item["image"], alt=f"true {true}, predicted {predicted}",
                                      caption=[f"true: {true}", f"predicted: {predicted}",
                                               f"confidence: {float(item['confidence']):.1%}"]))
    return reports.Figures(figures, size="large")


# --- plots -----------------------------------------------------------------


def _tick_label(name: str) -> str:
    if len(name) > MAX_TICK_LABEL_CHARS:
        # Cut the middle: names often share a prefix or a suffix, rarely both.
        keep = MAX_TICK_LABEL_CHARS - 1
        name = name[: (keep + 1) // 2] + "\u2026" + name[len(name) - keep // 2 :]
    return reports.plot_text(name)


def _plot_confusion_matrix(matrix: np.ndarray, names: list[str]) -> bytes:
    num_classes = len(names)
    side = min(max(4.0, 0.28 * num_classes + 2.0), 16.0)
    figure = Figure(figsize=(side + 1.0, side))
    axes = figure.add_subplot()
    # Colour by row share (recall per cell) so rare classes are as visible as common ones.
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals != 0)
    heat = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(heat, ax=axes, fraction=0.046, pad=0.04, label="share of true class")
    font_size = 9 if num_classes <= 20 else 6
    labels = [_tick_label(name) for name in names]
    axes.set_xticks(range(num_classes), labels, rotation=90, fontsize=font_size)
    axes.set_yticks(range(num_classes), labels, fontsize=font_size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=font_size)
    return reports.png(figure)


def _plot_curves(result: EvaluationResult) -> bytes:
    figure = Figure(figsize=(9.0, 4.0))
    roc_axes, pr_axes = figure.subplots(1, 2)
    roc, pr = result.roc_curve, result.pr_curve
    auc = result.scalars.get("auc", math.nan)
    roc_axes.plot(roc["fpr"], roc["tpr"], label=f"AUC = {auc:.4f}")
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    roc_axes.legend(loc="lower right")
    prc = result.scalars.get("prc", math.nan)
    # Average precision is a step-wise sum, so the curve is drawn as steps too.
    pr_axes.step(pr["recall"], pr["precision"], where="post", label=f"AP = {prc:.4f}")
    pr_axes.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    pr_axes.legend(loc="lower left")
    figure.tight_layout()
    return reports.png(figure)


def _plot_history(history: dict[str, list[float]]) -> bytes:
    # One panel per metric, training and validation together: "loss" with
    # "val_loss", "accuracy" with "val_accuracy", and so on.
    bases = []
    for key in history:
        base = key.removeprefix("val_")
        if base not in bases:
            bases.append(base)
    columns = min(len(bases), 3)
    rows = math.ceil(len(bases) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows))
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes, base in zip(panels, bases, strict=False):
        for key, label in ((base, "training"), (f"val_{base}", "validation")):
            values = history.get(key)
            if values:
                axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        axes.set(title=_tick_label(base), xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize=8)
    for axes in panels[len(bases):]:
        axes.set_visible(False)
    figure.tight_layout()
    return reports.png(figure)

