"""validate -> prepare -> train -> evaluate -> export (only when the quality
gate blesses the model) -> batch prediction (only when asked for).

The pipeline's parameters are ``kic.parameters.PIPELINE_PARAMETERS``: its
signature is generated from that list, so every parameter has one name, type,
default and description.
"""

import inspect

from kfp import dsl

from kic import artifacts, parameters
from kic.components import docs
from kic.components.batch_predict.component import batch_predict
from kic.components.evaluate.component import evaluate
from kic.components.export.component import export
from kic.components.prepare.component import prepare
from kic.components.train.component import train
from kic.components.validate.component import validate

PIPELINE_NAME = "image-classification-training"

# Task names, as they appear in the UI and in the local run's output folders.
VALIDATE_TASK, PREPARE_TASK, TRAIN_TASK, EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK = (
    "validate", "prepare", "train", "evaluate", "export", "batch-predict")


def _training_pipeline(**p):
    hyperparameters = {name: p[name] for name in parameters.HYPERPARAMETERS}

    # Every parameter is checked here, in seconds, before prepare reads any image.
    validated = validate(**p).set_display_name(VALIDATE_TASK)

    prepared = prepare(
        source=p["data_source"], validation_source=p["validation_source"], test_source=p["test_source"],
        validation_fraction=p["validation_fraction"], test_fraction=p["test_fraction"], seed=p["split_seed"],
        image_short_side=validated.output, tfds_data_dir=p["tfds_data_dir"],
        max_rejected_fraction=p["max_rejected_fraction"],
    ).set_display_name(PREPARE_TASK)

    trained = train(
        examples=prepared.outputs[artifacts.EXAMPLES_KEY], backbone=p["backbone"],
        pretrained_weights=p["pretrained_weights"], image_size=p["image_size"],
        base_model_uri=p["base_model_uri"], seed=p["seed"], **hyperparameters,
    ).set_display_name(TRAIN_TASK)

    evaluated = evaluate(
        examples=prepared.outputs[artifacts.EXAMPLES_KEY], model=trained.outputs[artifacts.MODEL_KEY],
        gate_metric=p["gate_metric"], gate_minimum=p["gate_minimum"], baseline_model_uri=p["baseline_model_uri"],
        max_regression=p["max_regression"], top_k=p["top_k"],
    ).set_display_name(EVALUATE_TASK)

    # The single output (not a named one): kfp.local resolves conditions only on
    # `<task>-Output` channels (kfp 2.17), and clusters read both alike.
    with dsl.If(evaluated.outputs[artifacts.BLESSED_KEY] == True, name="model-blessed"):  # noqa: E712 (KFP condition)
        exported = export(
            model=trained.outputs[artifacts.MODEL_KEY], evaluation=evaluated.outputs[artifacts.METRICS_KEY],
            examples=prepared.outputs[artifacts.EXAMPLES_KEY],
            destination_uri=p["export_uri"], tflite=p["tflite"], top_k=p["top_k"],
        ).set_display_name(EXPORT_TASK)
        with dsl.If(p["batch_predict_source"] != "", name="batch-prediction-requested"):
            batch_predict(package=exported.outputs[artifacts.PACKAGE_KEY], inputs=p["batch_predict_source"],
                          output_format=p["batch_predict_format"], top_k=p["top_k"]).set_display_name(PREDICT_TASK)


def _with_parameters(body, name: str):
    """``body(**values)`` as a function whose signature is the pipeline's
    parameters, which is what KFP reads (it calls it with one channel per
    parameter, in order)."""
    signature = inspect.Signature([
        inspect.Parameter(parameter.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=parameter.type,
                          default=inspect.Parameter.empty if parameter.required else parameter.default)
        for parameter in parameters.PIPELINE_PARAMETERS])

    def pipeline(*args, **kwargs):
        return body(**signature.bind(*args, **kwargs).arguments)

    pipeline.__signature__ = signature
    pipeline.__name__ = pipeline.__qualname__ = name
    pipeline.__module__ = __name__
    return pipeline


training_pipeline = _with_parameters(_training_pipeline, "training_pipeline")
training_pipeline.__doc__ = docs.docstring(
    "Transfer learning of a pretrained image backbone: validate every parameter, prepare the images, train, "
    "evaluate, and export when the quality gate passes.",
    docs.pipeline_parameter_args(),
)
training_pipeline = dsl.pipeline(name=PIPELINE_NAME)(training_pipeline)
