"""Human-readable evaluation reports: one self-contained HTML page and a Markdown summary.

The HTML page makes no network requests: plots and example images are inline
``data:`` URIs and the style sheet is inline, so it renders the same from a
bucket, an air-gapped cluster or the KFP UI. Class names and every other text
come from users' folder names and are escaped before they reach the page.

Plots use ``matplotlib.figure.Figure`` directly rather than pyplot: no global
figure registry and no backend switch, so rendering is headless and safe to
call from several threads.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kic.evaluation.comparison import Comparison
from kic.evaluation.gate import Blessing
from kic.evaluation.metrics import EvaluationResult, most_confused_classes

DPI = 80
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

_IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.name, th.name { text-align: left; }
.verdict { padding: 0.8em 1em; border-radius: 6px; margin: 1em 0; }
.blessed { background: #e6f4ea; border: 1px solid #34a853; }
.not-blessed { background: #fce8e6; border: 1px solid #d93025; }
.note { color: #666; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid figure { margin: 0; width: 160px; font-size: 0.8em; }
.grid img { max-width: 160px; max-height: 160px; display: block; }
.missing { width: 160px; height: 100px; background: #eee; display: flex; align-items: center;
           justify-content: center; color: #888; }
"""


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
    sections = [f"<h1>{_escape(title)}</h1>"]
    if blessing is not None:
        sections.append(_verdict_html(blessing))
    if comparison is not None:
        sections.append(_comparison_html(comparison))
    sections.append("<h2>Headline metrics</h2>")
    sections.append(_metrics_table_html(_headline_metrics(result)))
    sections.append("<h2>Confusion matrix</h2>")
    sections.append(_confusion_matrix_html(result))
    if result.roc_curve is not None and result.pr_curve is not None:
        sections.append("<h2>ROC and precision-recall curves</h2>")
        sections.append(image_html(_plot_curves(result), "ROC and precision-recall curves"))
    sections.append("<h2>Per-class metrics (worst F1 first)</h2>")
    sections.append(_per_class_html(result))
    if history:
        sections.append("<h2>Training curves</h2>")
        sections.append(image_html(_plot_history(history), "training curves"))
    if misclassified:
        sections.append("<h2>Misclassified examples (most confident first)</h2>")
        sections.append(_misclassified_html(misclassified))
    sections.append("<h2>All metrics</h2>")
    sections.append(_metrics_table_html(sorted(result.scalars.items())))
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def render_markdown(result: EvaluationResult, *, blessing: Blessing | None = None,
                    comparison: Comparison | None = None) -> str:
    """A short summary for the KFP UI: verdict, the baseline side by side,
    headline metrics, worst classes."""
    lines = ["# Evaluation summary", ""]
    if blessing is not None:
        verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"
        lines.append(f"**Verdict: {verdict}** (gate on {markdown_escape(blessing.metric)})")
        lines.append("")
        if not blessing.blessed:
            lines += [f"**{markdown_escape(blessing.summary()[:1].upper() + blessing.summary()[1:])}**", ""]
        lines.extend(f"- {markdown_escape(reason)}" for reason in blessing.reasons)
        lines.append("")
    if comparison is not None:
        lines += _comparison_markdown(comparison)
    lines += ["## Headline metrics", "", "| Metric | Value |", "|---|---:|"]
    lines += [f"| {name} | {_format_number(value)} |" for name, value in _headline_metrics(result)]
    rows = _worst_first(result.per_class)
    lines += ["", "## Per-class metrics (worst F1 first)", ""]
    if len(rows) > MAX_MARKDOWN_CLASS_ROWS:
        lines += [f"Showing the {MAX_MARKDOWN_CLASS_ROWS} worst of {len(rows)} classes.", ""]
    lines += ["| Class | Precision | Recall | F1 | Support |", "|---|---:|---:|---:|---:|"]
    for row in rows[:MAX_MARKDOWN_CLASS_ROWS]:
        lines.append(
            f"| {markdown_escape(row['class'])} | {row['precision']:.4f} | {row['recall']:.4f} "
            f"| {row['f1']:.4f} | {row['support']} |"
        )
    return "\n".join(lines) + "\n"


def _comparison_markdown(comparison: Comparison) -> list[str]:
    lines = ["## Against the baseline", "", f"Baseline: {markdown_escape(comparison.baseline_model)}, compared "
             f"{markdown_escape(comparison.compared_on)}.", ""]
    lines += [f"- {markdown_escape(sentence)}" for sentence in _class_change_sentences(comparison)]
    if comparison.added_classes or comparison.removed_classes:
        lines.append("")
    if comparison.headline():
        lines += ["| Metric | New | Baseline | Change |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {new:.4f} | {old:.4f} | {change:+.4f} |"
                  for name, new, old, change in comparison.headline()]
        lines.append("")
    regressions = comparison.biggest_regressions()
    if regressions:
        lines += ["### Biggest per-class regressions (F1)", "", "| Class | New F1 | Baseline F1 | Change | Support |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {markdown_escape(row['class'])} | {row['f1']:.4f} | {row['baseline_f1']:.4f} "
                  f"| {row['change']:+.4f} | {row['support']} |" for row in regressions]
        lines.append("")
    lines += ["### Data since the baseline", ""]
    changes = comparison.data_changes
    if not changes.known:
        lines += ["The baseline's model info does not record its training data (a model from an earlier kic).", ""]
        return lines
    lines += [f"Images: {changes.total_baseline} then, {changes.total_now} now "
              f"({changes.total_now - changes.total_baseline:+d}).", "",
              "| Class | Baseline | Now | Change |", "|---|---:|---:|---:|"]
    changed = [row for row in changes.rows if row["change"] != 0]
    lines += [f"| {markdown_escape(row['class'])} | {_count(row['baseline'])} | {_count(row['now'])} "
              f"| {_change(row['change'])} |" for row in changed[:MAX_MARKDOWN_CLASS_ROWS]]
    if len(changed) > MAX_MARKDOWN_CLASS_ROWS:
        lines.append(f"\n{len(changed) - MAX_MARKDOWN_CLASS_ROWS} more changed classes in the HTML report.")
    if not changed:
        lines.append("| (every class) | same | same | 0 |")
    return [*lines, ""]


def _class_change_sentences(comparison: Comparison) -> list[str]:
    sentences = []
    if comparison.added_classes:
        sentences.append("Classes new since the baseline (it never saw them): " + ", ".join(comparison.added_classes))
    if comparison.removed_classes:
        sentences.append("Classes of the baseline gone from the data: " + ", ".join(comparison.removed_classes))
    return sentences


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _change(value: int | None) -> str:
    return "?" if value is None else f"{value:+d}"


# --- HTML pieces -------------------------------------------------------------


def _comparison_html(comparison: Comparison) -> str:
    parts = ["<h2>Against the baseline</h2>",
             f"<p>Baseline <code>{_escape(comparison.baseline_model)}</code>, compared "
             f"{_escape(comparison.compared_on)}.</p>"]
    sentences = _class_change_sentences(comparison)
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{_escape(sentence)}</li>" for sentence in sentences) + "</ul>")
    if comparison.headline():
        rows = "".join(f"<tr><td class=\"name\">{_escape(name)}</td><td>{new:.4f}</td><td>{old:.4f}</td>"
                       f"<td>{change:+.4f}</td></tr>" for name, new, old, change in comparison.headline())
        parts.append("<table><tr><th class=\"name\">Metric</th><th>New</th><th>Baseline</th><th>Change</th></tr>"
                     f"{rows}</table>")
    per_class = comparison.per_class_f1()
    if per_class:
        parts.append("<h3>Per-class F1 against the baseline (biggest drop first)</h3>")
        rows = "".join(f"<tr><td class=\"name\">{_escape(row['class'])}</td><td>{row['f1']:.4f}</td>"
                       f"<td>{row['baseline_f1']:.4f}</td><td>{row['change']:+.4f}</td><td>{row['support']}</td></tr>"
                       for row in per_class)
        parts.append("<table><tr><th class=\"name\">Class</th><th>New F1</th><th>Baseline F1</th><th>Change</th>"
                     f"<th>Support</th></tr>{rows}</table>")
    parts.append("<h3>Data since the baseline</h3>")
    changes = comparison.data_changes
    if not changes.known:
        parts.append("<p class=\"note\">The baseline's model info does not record its training data (a model from "
                     "an earlier kic).</p>")
        return "\n".join(parts)
    parts.append(f"<p>Images (every split): {changes.total_baseline} then, {changes.total_now} now "
                 f"({changes.total_now - changes.total_baseline:+d}). Net counts per class: an image replaced by "
                 "another of its class is not seen here.</p>")
    rows = "".join(f"<tr><td class=\"name\">{_escape(row['class'])}</td><td>{_count(row['baseline'])}</td>"
                   f"<td>{_count(row['now'])}</td><td>{_change(row['change'])}</td></tr>" for row in changes.rows)
    parts.append("<table><tr><th class=\"name\">Class</th><th>Baseline</th><th>Now</th><th>Change</th></tr>"
                 f"{rows}</table>")
    return "\n".join(parts)


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


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


def _metrics_table_html(items: Sequence[tuple[str, float]]) -> str:
    rows = "".join(
        f"<tr><td class=\"name\">{_escape(name)}</td><td>{_format_number(value)}</td></tr>"
        for name, value in items
    )
    return f"<table><tr><th class=\"name\">Metric</th><th>Value</th></tr>{rows}</table>"


def _verdict_html(blessing: Blessing) -> str:
    css_class, verdict = ("blessed", "BLESSED") if blessing.blessed else ("not-blessed", "NOT BLESSED")
    reasons = "".join(f"<li>{_escape(reason)}</li>" for reason in blessing.reasons)
    return (
        f"<div class=\"verdict {css_class}\"><strong>Quality gate: {verdict}</strong> "
        f"(metric <code>{_escape(blessing.metric)}</code>)<ul>{reasons}</ul></div>"
    )


def _worst_first(per_class: list[dict]) -> list[dict]:
    return sorted(per_class, key=lambda row: (row["f1"], row["recall"], row["class"]))


def _per_class_html(result: EvaluationResult) -> str:
    header = (
        "<tr><th class=\"name\">Class</th><th>Precision</th><th>Recall</th>"
        "<th>F1</th><th>Support</th></tr>"
    )
    rows = "".join(
        f"<tr><td class=\"name\">{_escape(row['class'])}</td><td>{row['precision']:.4f}</td>"
        f"<td>{row['recall']:.4f}</td><td>{row['f1']:.4f}</td><td>{row['support']}</td></tr>"
        for row in _worst_first(result.per_class)
    )
    return f"<table>{header}{rows}</table>"


def _confusion_matrix_html(result: EvaluationResult) -> str:
    matrix = np.asarray(result.confusion_matrix, dtype=np.int64)
    shown = most_confused_classes(matrix, MAX_CONFUSION_CLASSES)
    note = ""
    if len(shown) < len(result.class_names):
        note = (
            f"<p class=\"note\">Showing the {len(shown)} of {len(result.class_names)} classes with the "
            "most errors; the full matrix is in the evaluation JSON.</p>"
        )
    names = [result.class_names[i] for i in shown]
    image = _plot_confusion_matrix(matrix[np.ix_(shown, shown)], names)
    return note + image_html(image, "confusion matrix")


def _misclassified_html(misclassified: list[dict]) -> str:
    ordered = sorted(misclassified, key=lambda item: float(item["confidence"]), reverse=True)
    cells = []
    for item in ordered:
        true, predicted, confidence = item["true"], item["predicted"], float(item["confidence"])
        caption = (
            f"true: {_escape(true)}<br>predicted: {_escape(predicted)}<br>confidence: {confidence:.1%}"
        )
        alt = _escape(f"true {true}, predicted {predicted}")
        mime = _sniff_image_type(item["image"])
        if mime is None:
            picture = "<div class=\"missing\">unsupported image format</div>"
        else:
            encoded = base64.b64encode(item["image"]).decode("ascii")
            picture = f"<img src=\"data:{mime};base64,{encoded}\" alt=\"{alt}\">"
        cells.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    return f"<div class=\"grid\">{''.join(cells)}</div>"


def _sniff_image_type(data: bytes) -> str | None:
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_html(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f"<p><img src=\"data:image/png;base64,{encoded}\" alt=\"{_escape(alt)}\"></p>"


# --- plots -----------------------------------------------------------------


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _tick_label(name: str) -> str:
    if len(name) > MAX_TICK_LABEL_CHARS:
        # Cut the middle: names often share a prefix or a suffix, rarely both.
        keep = MAX_TICK_LABEL_CHARS - 1
        name = name[: (keep + 1) // 2] + "\u2026" + name[len(name) - keep // 2 :]
    # A "$" would start matplotlib mathtext; an unbalanced one raises.
    return name.replace("$", r"\$")


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
    return to_png(figure)


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
    return to_png(figure)


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
    return to_png(figure)


def markdown_escape(text: object) -> str:
    # Markdown renderers pass raw HTML through, so escape it, and keep table
    # cells intact by escaping the column separator.
    escaped = html.escape(str(text), quote=False)
    for character in "\\`*_[]|":
        escaped = escaped.replace(character, "\\" + character)
    return escaped.replace("\n", " ")
