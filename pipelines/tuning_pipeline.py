"""Hyperparameter search: validate -> snapshot -> prepare once; the trials in
two waves of parallel training tasks on the same prepared data; the best
trial's model -> evaluate -> export (only when the quality gate blesses it) ->
batch prediction (only when asked for), as in the training pipeline.

plan_trials checks the search space against the hyperparameter contract and
plans the first wave before any data is read; each trial trains as train does
(and is placed like it, on a GPU) and records itself, a failed one included;
plan_second_wave plans the rest knowing the first wave's results (tpe learns
from them); select_best picks the winner by the objective and reports on the
search. The parameters are the training pipeline's (``kic.parameters``) and
the tuning ones (``kic.tuning.settings.TUNING_PARAMETERS``); how many trials
run at once is fixed when the pipeline is built (KFP's ParallelFor takes a
number, not a parameter).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics

from kic import artifacts, parameters
from kic.components import docs
from kic.components.plan_second_wave.component import plan_second_wave
from kic.components.plan_trials.component import plan_trials
from kic.components.select_best.component import select_best
from kic.components.trial.component import trial
from kic.pipeline_names import PLAN_TASK, SECOND_PLAN_TASK, SELECT_TASK, TRIAL_TASK, TUNING_PIPELINE_NAME
from kic.pipelines.placement import ClusterOptions, place
from kic.pipelines.training_pipeline import evaluate_and_export, validate_and_prepare, with_parameters
from kic.tuning.settings import DEFAULT_PARALLELISM, TUNING_PARAMETERS

FIRST_WAVE, SECOND_WAVE = "first-wave", "second-wave"  # the two ParallelFor loops


# What a run returns: the training pipeline's outputs, for the winner, and the search's.
class Outputs(NamedTuple):
    examples: Dataset
    metrics: Metrics
    evaluation: Artifact
    evaluation_report: HTML
    blessing: Artifact
    trials: Artifact
    tuning_report: HTML
    tuning_report_markdown: Markdown
    best_hyperparameters: Artifact


def build(cluster: ClusterOptions | None = None, parallelism: int = DEFAULT_PARALLELISM):
    """The tuning pipeline, placed for ``cluster.target`` (by default Kubeflow
    Pipelines'), running at most ``parallelism`` trials at once."""
    cluster = cluster or ClusterOptions()

    def tuning_pipeline(**p):
        p = {**cluster.train_machines(), **p}  # literals where the trials' GPUs are compiled in
        hyperparameters = {name: p[name] for name in parameters.HYPERPARAMETERS}
        _, sources, prepared = validate_and_prepare(p, cluster)
        planned = place(plan_trials(
            search_space=p["search_space"], search_space_fingerprint=sources.outputs["search_space"],
            strategy=p["strategy"], trials=p["trials"],
            objective_metric=p["objective_metric"], objective_direction=p["objective_direction"],
            parallelism=parallelism, gate_metric=p["gate_metric"], top_k=p["top_k"], seed=p["seed"],
            **hyperparameters,
        ), "plan_trials", cluster).set_display_name(PLAN_TASK)
        prepared.after(planned)  # a search space that can produce an invalid trial fails before any data is read
        examples = prepared.outputs[artifacts.EXAMPLES_KEY]

        def run_trial(item):
            return place(trial(
                examples=examples, trial=item, backbone=p["backbone"], pretrained_weights=p["pretrained_weights"],
                image_size=p["image_size"], base_model_uri=p["base_model_uri"],
                base_model_fingerprint=sources.outputs["base_model"],
                pretrained_weights_fingerprint=sources.outputs["pretrained_weights"], seed=p["seed"],
                required_gpus=p["accelerator_count"], precision=p["precision"], jit_compile=p["jit_compile"],
                checkpoint_uri=p["checkpoint_uri"], checkpoint_every_steps=p["checkpoint_every_steps"],
            ), "train", cluster, accelerator_type=p["accelerator_type"],
                accelerator_count=p["accelerator_count"]).set_display_name(TRIAL_TASK)

        with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism, name=FIRST_WAVE) as item:
            first = run_trial(item)
        replanned = place(plan_second_wave(settings=planned.outputs["settings"],
                                           first_wave=dsl.Collected(first.outputs["Output"])),
                          "plan_trials", cluster).set_display_name(SECOND_PLAN_TASK)
        with dsl.ParallelFor(replanned.output, parallelism=parallelism, name=SECOND_WAVE) as item:
            second = run_trial(item)

        selected = place(select_best(
            settings=planned.outputs["settings"], first_wave=dsl.Collected(first.outputs["Output"]),
            second_wave=dsl.Collected(second.outputs["Output"]),
            first_wave_models=dsl.Collected(first.outputs[artifacts.MODEL_KEY]),
            second_wave_models=dsl.Collected(second.outputs[artifacts.MODEL_KEY]),
        ), "select_best", cluster).set_display_name(SELECT_TASK)

        evaluated = evaluate_and_export(p, cluster, examples=examples, model=selected.outputs["best_model"],
                                        sources=sources)
        return Outputs(examples=examples, metrics=evaluated.outputs[artifacts.METRICS_KEY],
                       evaluation=evaluated.outputs[artifacts.EVALUATION_KEY],
                       evaluation_report=evaluated.outputs[artifacts.EVALUATION_REPORT_KEY],
                       blessing=evaluated.outputs[artifacts.BLESSING_KEY], trials=selected.outputs["trials"],
                       tuning_report=selected.outputs["report"],
                       tuning_report_markdown=selected.outputs["report_markdown"],
                       best_hyperparameters=selected.outputs["best_hyperparameters"])

    pipeline = with_parameters(tuning_pipeline, "tuning_pipeline", cluster.target,
                               (*(parameter for parameter in cluster.run_parameters()
                                  if parameter.name not in parameters.CUSTOM_JOB_PARAMETERS), *TUNING_PARAMETERS),
                               Outputs)
    pipeline.__doc__ = docs.docstring(
        "Hyperparameter search over the training pipeline: prepare the images once, train the trials in parallel, "
        "then evaluate the best trial's model and export it when the quality gate passes.",
        {**docs.pipeline_parameter_args(),
         **docs.tuning_parameter_args(*(parameter.name for parameter in TUNING_PARAMETERS))},
    )
    return dsl.pipeline(name=TUNING_PIPELINE_NAME)(pipeline)
