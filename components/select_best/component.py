"""select_best: pick the best trial, report on the search, and hand the winner on."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


def select_best(
    settings: Input[Artifact],
    first_wave: list,
    second_wave: list,
    first_wave_models: Input[list[Model]],
    second_wave_models: Input[list[Model]],
    best_model: Output[Model],
    trials: Output[Artifact],
    best_hyperparameters: Output[Artifact],
    report: Output[HTML],
    report_markdown: Output[Markdown],
    tuning_metrics: Output[Metrics],
):
    arguments = dict(locals())
    from kic.runtime import steps

    steps.select_best_step(**arguments)


select_best.__doc__ = docs.docstring(
    "Picks the trial with the best objective (the earliest among equals; failed trials have none), copies its "
    "model for evaluation and export, and writes the search's record and report. Fails, listing why each trial "
    "failed, when none succeeded.",
    {
        "settings": "The search settings from plan_trials.",
        "first_wave": "The first wave's trial results.",
        "second_wave": "The second wave's trial results.",
        "first_wave_models": "The first wave's trial models.",
        "second_wave_models": "The second wave's trial models.",
    },
    {
        "best_model": "The winning trial's model, as train writes it.",
        "trials": "trials.json: the settings, every trial (hyperparameters, objective, epochs run, seconds, "
                  "status) and the winner.",
        "best_hyperparameters": "The winner's 25 hyperparameters as strings, the reference's format: a file for "
                                "kic run --hyperparameters.",
        "report": "Self-contained HTML tuning report: the trials' table and the objective against the most "
                  "influential hyperparameters.",
        "report_markdown": "The tuning report in Markdown.",
        "tuning_metrics": "The best objective and the numbers of trials that succeeded and failed.",
    },
)
select_best = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(select_best)
