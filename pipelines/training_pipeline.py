"""validate -> snapshot -> prepare -> train -> evaluate -> export (only when
the quality gate blesses the model) -> batch prediction (only when asked for)
and, in the Vertex AI pipeline, the upload to its Model Registry (only when
asked for: ``kic.pipelines.model_registry``). In the Vertex AI pipeline train
is a CustomJob on ``train_replica_count`` machines (``kic.pipelines.vertex_training``).

The pipeline's parameters are ``kic.parameters.PIPELINE_PARAMETERS``: its
signature is generated from that list (those of the target: the Model Registry's
are the Vertex AI pipeline's only), so every parameter has one name, type,
default and description. ``build`` makes the pipeline for a target
(``kic.pipelines.placement``): ``kfp`` and ``vertex`` place each step in
their platform's terms (train on a GPU), ``local`` is what ``kic run`` runs.
"""

import inspect
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from kic import artifacts, parameters
from kic.components import docs
from kic.components.batch_predict.component import batch_predict
from kic.components.evaluate.component import evaluate
from kic.components.export.component import export
from kic.components.prepare.component import prepare
from kic.components.snapshot.component import snapshot
from kic.components.train.component import train
from kic.components.validate.component import validate
from kic.pipeline_names import (
    EVALUATE_TASK,
    EXPORT_TASK,
    PREDICT_TASK,
    PREPARE_TASK,
    SNAPSHOT_TASK,
    TRAIN_TASK,
    TRAINING_PIPELINE_NAME,
    VALIDATE_TASK,
)
from kic.pipelines import model_registry
from kic.pipelines.placement import ClusterOptions, place


# What a run returns, wherever its steps' outputs come from (a cached step's are
# an earlier run's): `kic run` gathers its results from these.
class Outputs(NamedTuple):
    examples: Dataset
    metrics: Metrics
    evaluation: Artifact
    evaluation_report: HTML
    blessing: Artifact


def build(cluster: ClusterOptions | None = None):
    """The pipeline, placed for ``cluster.target`` (by default Kubeflow Pipelines'); the
    Vertex AI one needs Google Cloud Pipeline Components (``pip install kic[vertex]``)."""
    cluster = cluster or ClusterOptions()
    train_job = None
    if cluster.target == "vertex":
        model_registry.require_components()  # before anything is built
        from kic.pipelines import vertex_training

        train_job = vertex_training.TrainJob(train, cluster)

    def training_pipeline(**p):
        p = {**cluster.train_machines(), **p}  # literals where train's machines are compiled in
        hyperparameters = {name: p[name] for name in parameters.HYPERPARAMETERS}
        _, sources, prepared = validate_and_prepare(p, cluster)

        train_arguments = dict(
            examples=prepared.outputs[artifacts.EXAMPLES_KEY], backbone=p["backbone"],
            pretrained_weights=p["pretrained_weights"], image_size=p["image_size"],
            base_model_uri=p["base_model_uri"], base_model_fingerprint=sources.outputs["base_model"],
            pretrained_weights_fingerprint=sources.outputs["pretrained_weights"],
            seed=p["seed"], required_gpus=p["accelerator_count"], tf_data_service=p["tf_data_service"],
            precision=p["precision"], jit_compile=p["jit_compile"], checkpoint_uri=p["checkpoint_uri"],
            checkpoint_every_steps=p["checkpoint_every_steps"], **hyperparameters,
        )
        if train_job:
            trained = train_job(p, **train_arguments)
        else:
            trained = place(train(**train_arguments), "train", cluster, accelerator_type=p["accelerator_type"],
                            accelerator_count=p["accelerator_count"])
        trained.set_display_name(TRAIN_TASK)

        evaluated = evaluate_and_export(p, cluster, examples=prepared.outputs[artifacts.EXAMPLES_KEY],
                                        model=trained.outputs[artifacts.MODEL_KEY], sources=sources)
        return Outputs(examples=prepared.outputs[artifacts.EXAMPLES_KEY],
                       metrics=evaluated.outputs[artifacts.METRICS_KEY],
                       evaluation=evaluated.outputs[artifacts.EVALUATION_KEY],
                       evaluation_report=evaluated.outputs[artifacts.EVALUATION_REPORT_KEY],
                       blessing=evaluated.outputs[artifacts.BLESSING_KEY])

    pipeline = with_parameters(training_pipeline, "training_pipeline", cluster.target, cluster.run_parameters(),
                               Outputs)
    pipeline.__doc__ = docs.docstring(
        "Transfer learning of a pretrained image backbone: validate every parameter, prepare the images, train, "
        "evaluate, and export when the quality gate passes.",
        docs.pipeline_parameter_args(cluster.target),
    )
    return dsl.pipeline(name=TRAINING_PIPELINE_NAME)(pipeline)


def validate_and_prepare(p: dict, cluster: ClusterOptions):
    """validate -> snapshot -> prepare, as every pipeline of ours begins: the
    validate, snapshot and prepare tasks."""
    # Every parameter is checked here, in seconds, before any step reads data.
    validated = place(validate(**{name: value for name, value in p.items() if name in parameters.PARAMETERS_BY_NAME}),
                      "validate", cluster).set_display_name(VALIDATE_TASK)

    # Never cached: what the sources are now decides whether the cached steps below can be reused.
    sources = place(snapshot(
        data_source=p["data_source"], validation_source=p["validation_source"], test_source=p["test_source"],
        tfds_data_dir=p["tfds_data_dir"], base_model_uri=p["base_model_uri"],
        baseline_model_uri=p["baseline_model_uri"], export_uri=p["export_uri"],
        pretrained_weights=p["pretrained_weights"],
        search_space=p.get("search_space", ""),  # the tuning pipeline's
    ), "snapshot", cluster).set_display_name(SNAPSHOT_TASK).set_caching_options(False).after(validated)

    prepared = place(prepare(
        source=p["data_source"], validation_source=p["validation_source"], test_source=p["test_source"],
        validation_fraction=p["validation_fraction"], test_fraction=p["test_fraction"], seed=p["split_seed"],
        image_short_side=validated.output, tfds_data_dir=p["tfds_data_dir"],
        max_rejected_fraction=p["max_rejected_fraction"], source_fingerprint=sources.outputs["data"],
    ), "prepare", cluster).set_display_name(PREPARE_TASK)
    return validated, sources, prepared


def evaluate_and_export(p: dict, cluster: ClusterOptions, *, examples, model, sources):
    """evaluate -> export (only when the quality gate blesses ``model``) ->
    batch prediction (only when asked for), as every pipeline of ours ends:
    the evaluate task."""
    evaluated = place(evaluate(
        examples=examples, model=model,
        gate_metric=p["gate_metric"], gate_minimum=p["gate_minimum"],
        # Resolved by snapshot when the run started (by default what export_uri/LATEST names then).
        baseline_model_uri=sources.outputs["baseline_model_uri"],
        baseline_fingerprint=sources.outputs["baseline_model"],
        max_regression=p["max_regression"], allow_removed_classes=p["allow_removed_classes"], top_k=p["top_k"],
    ), "evaluate", cluster).set_display_name(EVALUATE_TASK)

    # The single output (not a named one): kfp.local resolves conditions only on
    # `<task>-Output` channels (kfp 2.17), and clusters read both alike.
    with dsl.If(evaluated.outputs[artifacts.BLESSED_KEY] == True, name="model-blessed"):  # noqa: E712 (KFP)
        exported = place(export(
            model=model, evaluation=evaluated.outputs[artifacts.METRICS_KEY], examples=examples,
            destination_uri=p["export_uri"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tflite=p["tflite"],
            top_k=p["top_k"], serving_skew_action=p["serving_skew_action"],
        ), "export", cluster).set_display_name(EXPORT_TASK).set_caching_options(False)  # a version per run
        with dsl.If(p["batch_predict_source"] != "", name="batch-prediction-requested"):
            place(batch_predict(
                package=exported.outputs[artifacts.PACKAGE_KEY], inputs=p["batch_predict_source"],
                output_format=p["batch_predict_format"], top_k=p["top_k"],
            ), "batch_predict", cluster).set_display_name(PREDICT_TASK)
        if cluster.target == "vertex":
            model_registry.upload(exported, p)
    return evaluated


def with_parameters(body, name: str, target: str, pipeline_parameters, outputs):
    """``body(**values)`` as a function whose signature is ``pipeline_parameters``
    with the target's defaults, which is what KFP reads (it calls it with one
    channel per parameter, in order), returning ``outputs``."""
    ordered = sorted(pipeline_parameters, key=lambda parameter: not parameter.required)  # required ones first
    signature = inspect.Signature([
        inspect.Parameter(parameter.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=parameter.type,
                          default=inspect.Parameter.empty if parameter.required else parameter.default_for(target))
        for parameter in ordered], return_annotation=outputs)

    def pipeline(*args, **kwargs):
        return body(**signature.bind(*args, **kwargs).arguments)

    pipeline.__signature__ = signature
    pipeline.__name__ = pipeline.__qualname__ = name
    pipeline.__module__ = body.__module__
    return pipeline
