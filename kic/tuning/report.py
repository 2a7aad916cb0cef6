"""What a search leaves behind: trials.json, the tuning report (Markdown and
HTML, rendered by ``kic.reports``) and best_hyperparameters.json.

The report ranks the searched hyperparameters by how strongly the objective
follows them among the trials that succeeded: the absolute Spearman rank
correlation for a range (so a log scale and a linear one rank alike), the
correlation ratio of the objective's ranks for values. Both lie in [0, 1];
with a handful of trials they are a hint, not a measurement. Its plot shows
the objective against the most influential ones, failed trials marked at the
bottom, the best trial starred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from kic import config, reports
from kic.tuning import space as spaces
from kic.tuning.settings import Settings
from kic.tuning.trials import FAILED, SUCCEEDED, TrialResult

PLOTTED_PARAMETERS = 3
MIN_TRIALS_FOR_INFLUENCE = 3


def trials_document(settings: Settings, results: Sequence[TrialResult], winner: TrialResult) -> dict[str, Any]:
    """trials.json: the settings, every trial (in plan order) and the winner."""
    return {
        "objective": settings.objective.to_json(), "strategy": settings.strategy, "seed": settings.seed,
        "search_space": [dimension.to_json() for dimension in settings.dimensions],
        "fixed_hyperparameters": {name: value for name, value in settings.hyperparameters.items()
                                  if name not in settings.names},
        "best_trial": winner.trial,
        "succeeded": sum(result.status == SUCCEEDED for result in results),
        "failed": sum(result.status == FAILED for result in results),
        "influence": dict(influence(settings, results)),
        "trials": [result.to_json() for result in sorted(results, key=lambda result: result.trial)],
    }


def best_hyperparameters(settings: Settings, winner: TrialResult) -> dict[str, str]:
    """All 25 hyperparameters of the winner, as strings: the reference's
    format, which ``kic run --hyperparameters`` and ``kic validate`` read."""
    values = {**settings.hyperparameters, **winner.hyperparameters}
    return config.TrainingConfig.from_dict(values).to_reference_dict()


def influence(settings: Settings, results: Sequence[TrialResult]) -> list[tuple[str, float]]:
    """Each searched hyperparameter's influence on the objective, strongest first (see the module docstring)."""
    import numpy as np
    from scipy import stats

    succeeded = [result for result in results if result.status == SUCCEEDED]
    if len(succeeded) < MIN_TRIALS_FOR_INFLUENCE:
        return []
    objective = np.array([result.objective for result in succeeded], dtype=float)
    scores = []
    for dimension in settings.dimensions:
        values = [result.hyperparameters[dimension.name] for result in succeeded]
        if len(set(values)) < 2 or np.ptp(objective) == 0:
            score = 0.0
        elif dimension.kind == spaces.CATEGORICAL:
            ranks = stats.rankdata(objective)
            groups = [ranks[[value == level for value in values]] for level in set(values)]
            between = sum(len(group) * (group.mean() - ranks.mean()) ** 2 for group in groups)
            score = math.sqrt(between / ((ranks - ranks.mean()) ** 2).sum())
        else:
            score = abs(float(stats.spearmanr(np.array(values, dtype=float), objective).statistic))
        scores.append((dimension.name, round(score if math.isfinite(score) else 0.0, 4)))
    return sorted(scores, key=lambda item: -item[1])


# --------------------------------------------------------------------------- renderings


def render_markdown(document: dict[str, Any]) -> str:
    return reports.render_markdown(_report(document, with_plot=False))


def render_html(document: dict[str, Any]) -> str:
    return reports.render_html(_report(document, with_plot=True))


def _report(document: dict[str, Any], *, with_plot: bool) -> reports.Report:
    """The report's blocks; the plot only where it is shown (the page)."""
    blocks: list[reports.Block] = [reports.Bullets(_summary(document))]
    if with_plot:
        blocks += [reports.Heading("Objective against the most influential hyperparameters"),
                   reports.Picture(plot(document), "objective against the most influential hyperparameters")]
    blocks += [reports.Heading("Trials"), _table(document)]
    if document["influence"]:
        blocks += [reports.Heading(f"Influence on {document['objective']['metric']}"),
                   reports.Table(("hyperparameter", "influence"),
                                 [(name, f"{score:.2f}") for name, score in document["influence"].items()],
                                 numeric=(1,))]
    return reports.Report("Tuning report", blocks)


def _summary(document: dict[str, Any]) -> list[str]:
    objective = document["objective"]
    best = next(trial for trial in document["trials"] if trial["trial"] == document["best_trial"])
    return [f"Objective: {objective['direction']} {objective['metric']} (at each trial's best epoch)",
            f"Strategy: {document['strategy']} (seed {document['seed']}), {len(document['trials'])} trials: "
            f"{document['succeeded']} succeeded, {document['failed']} failed",
            f"Best: trial {best['trial']}, {objective['metric']} = {best['objective']:.4f}, with "
            + ", ".join(f"{name}={_cell(value)}" for name, value in best["hyperparameters"].items())]


def _table(document: dict[str, Any]) -> reports.Table:
    names = [dimension["name"] for dimension in document["search_space"]]
    headers = ["trial", "wave", "status", document["objective"]["metric"], *names, "epochs run", "seconds", "error"]
    rows = []
    for trial in document["trials"]:
        marker = " (best)" if trial["trial"] == document["best_trial"] else ""
        rows.append([f"{trial['trial']}{marker}", str(trial["wave"]), trial["status"],
                     "" if trial["objective"] is None else f"{trial['objective']:.4f}",
                     *[_cell(trial["hyperparameters"][name]) for name in names], str(trial["epochs_run"]),
                     f"{trial['seconds']:.1f}", trial["error"]])
    return reports.Table(headers, rows, numeric=(1, 3, 4 + len(names), 5 + len(names)))


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot(document: dict[str, Any]) -> bytes:
    """The objective by trial (with the best so far), and against each of the most influential hyperparameters."""
    from matplotlib.ticker import MaxNLocator

    dimensions = {dimension["name"]: dimension for dimension in document["search_space"]}
    ranked = list(document["influence"]) or list(dimensions)
    shown = ranked[:PLOTTED_PARAMETERS]
    trials = document["trials"]
    metric = document["objective"]["metric"]
    maximize = document["objective"]["direction"] == "maximize"
    objectives = [trial["objective"] for trial in trials if trial["objective"] is not None]
    low, high = min(objectives), max(objectives)
    floor = low - 0.1 * ((high - low) or abs(low) or 1.0)  # where failed trials, which have no objective, are marked
    figure = Figure(figsize=(4.0 * (len(shown) + 1), 3.4))
    panels = figure.subplots(1, len(shown) + 1, squeeze=False)[0]
    by_trial = panels[0]
    _scatter(by_trial, trials, [trial["trial"] for trial in trials], document["best_trial"], floor)
    best_so_far, steps = None, []
    for trial in trials:
        if trial["objective"] is not None and (best_so_far is None or (trial["objective"] > best_so_far) == maximize):
            best_so_far = trial["objective"]
        steps.append(best_so_far)
    by_trial.step([trial["trial"] for trial in trials], [floor if value is None else value for value in steps],
                  where="post", color="#5f6368", linewidth=1, label="best so far")
    by_trial.set(xlabel="trial", ylabel=metric, title="by trial")
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_trial.legend(fontsize=7)
    for axes, name in zip(panels[1:], shown, strict=True):
        dimension = dimensions[name]
        values = [trial["hyperparameters"][name] for trial in trials]
        if "values" in dimension:
            levels = [str(value) for value in dimension["values"]]
            _scatter(axes, trials, [levels.index(str(value)) for value in values], document["best_trial"], floor)
            axes.set_xticks(range(len(levels)), [reports.plot_text(level) for level in levels],
                            rotation=30 if len(levels) > 3 else 0)
            axes.set_xlim(-0.5, len(levels) - 0.5)
        else:
            _scatter(axes, trials, values, document["best_trial"], floor)
            if dimension["scale"] == spaces.LOG:
                axes.set_xscale("log")
        score = document["influence"].get(name)
        axes.set(xlabel=reports.plot_text(name),
                 title=f"influence {score:.2f}" if score is not None else reports.plot_text(name))
        axes.legend(fontsize=7)
    figure.tight_layout()
    return reports.png(figure)


def _scatter(axes, trials: list[dict], xs: list, best_trial: int, floor: float) -> None:
    succeeded = [(x, trial["objective"]) for x, trial in zip(xs, trials, strict=True) if trial["status"] == SUCCEEDED]
    axes.scatter([x for x, _ in succeeded], [y for _, y in succeeded], color="#1a73e8", label="trial")
    best = [(x, trial["objective"]) for x, trial in zip(xs, trials, strict=True) if trial["trial"] == best_trial]
    axes.scatter([x for x, _ in best], [y for _, y in best], marker="*", s=220, color="#f9ab00", edgecolors="black",
                 zorder=3, label="best")
    failed = [x for x, trial in zip(xs, trials, strict=True) if trial["status"] != SUCCEEDED]
    if failed:
        axes.scatter(failed, [floor] * len(failed), marker="x", color="#d93025", label="failed (no objective)")
