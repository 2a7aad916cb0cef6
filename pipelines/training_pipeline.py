"""prepare -> train -> evaluate -> export (only when the quality gate blesses the model)."""

from kfp import dsl

from kic.components import docs
from kic.components.batch_predict.component import batch_predict
from kic.components.evaluate.component import evaluate
from kic.components.export.component import export
from kic.components.prepare.component import prepare
from kic.components.train.component import train
from kic.components.validate.component import validate
from kic.config import TrainingConfig

PIPELINE_NAME = "image-classification-training"

# Task names, as they appear in the UI and in the local run's output folders.
VALIDATE_TASK, PREPARE_TASK, TRAIN_TASK, EVALUATE_TASK, EXPORT_TASK, PREDICT_TASK = (
    "validate", "prepare", "train", "evaluate", "export", "batch-predict")


def training_pipeline(
    data_source: str,
    validation_source: str = "",
    test_source: str = "",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.1,
    split_seed: int = 42,
    image_short_side: int = 0,
    tfds_data_dir: str = "",
    max_rejected_fraction: float = 0.05,
    backbone: str = "mobilenet_v2_100_224",
    pretrained_weights: str = "imagenet",
    image_size: int = 0,
    base_model_uri: str = "",
    seed: int = 42,
    gate_metric: str = "",
    gate_minimum: float = 0.0,
    baseline_model_uri: str = "",
    max_regression: float = 0.0,
    export_uri: str = "",
    tflite: str = "",
    top_k: int = 5,
    batch_predict_source: str = "",
    augmentation: bool = False,
    augmentation_random_flip: str = "horizontal_and_vertical",
    augmentation_random_rotation: float = 0.2,
    augmentation_random_zoom: float = 0.1,
    batch_size: int = 32,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    binary_mode: bool = False,
    dropout_rate: float = 0.2,
    early_stopping: bool = False,
    early_stopping_min_delta: float = 0.0,
    early_stopping_patience: int = 5,
    epochs: int = 3,
    epsilon: float = 1e-7,
    eval_metric: str = "accuracy",
    image_resize_interpolation: str = "bilinear",
    initial_accumulator_value: float = 0.0001,
    label_smoothing: float = 0.1,
    learning_rate: float = 0.001,
    momentum: float = 0.9,
    optimizer: str = "adam",
    regularizers_l2: float = 0.0001,
    reinitialize_top_layer: str = "Auto",
    rho: float = 0.95,
    train_only_on_top_layer: bool = False,
):
    hyperparameters = {name: value for name, value in locals().items() if name in TrainingConfig.field_names()}

    # Bad hyperparameters fail here, in seconds, before prepare reads any image.
    validated = validate(backbone=backbone, image_size=image_size, image_short_side=image_short_side,
                         **hyperparameters).set_display_name(VALIDATE_TASK)

    prepared = prepare(
        source=data_source, validation_source=validation_source, test_source=test_source,
        validation_fraction=validation_fraction, test_fraction=test_fraction, seed=split_seed,
        image_short_side=validated.output, tfds_data_dir=tfds_data_dir,
        max_rejected_fraction=max_rejected_fraction,
    ).set_display_name(PREPARE_TASK)

    trained = train(
        examples=prepared.outputs["examples"], backbone=backbone, pretrained_weights=pretrained_weights,
        image_size=image_size, base_model_uri=base_model_uri, seed=seed, **hyperparameters,
    ).set_display_name(TRAIN_TASK)

    evaluated = evaluate(
        examples=prepared.outputs["examples"], model=trained.outputs["model"], gate_metric=gate_metric,
        gate_minimum=gate_minimum, baseline_model_uri=baseline_model_uri, max_regression=max_regression,
        top_k=top_k,
    ).set_display_name(EVALUATE_TASK)

    # The single output (not a named one): kfp.local resolves conditions only on
    # `<task>-Output` channels (kfp 2.17), and clusters read both alike.
    with dsl.If(evaluated.outputs["Output"] == True, name="model-blessed"):  # noqa: E712 (a KFP condition, not Python)
        exported = export(
            model=trained.outputs["model"], evaluation=evaluated.outputs["metrics"],
            destination_uri=export_uri, tflite=tflite, top_k=top_k,
        ).set_display_name(EXPORT_TASK)
        with dsl.If(batch_predict_source != "", name="batch-prediction-requested"):
            batch_predict(package=exported.outputs["package"], inputs=batch_predict_source,
                          top_k=top_k).set_display_name(PREDICT_TASK)


training_pipeline.__doc__ = docs.docstring(
    "Transfer learning of a pretrained image backbone: prepare, train, evaluate, and export when the "
    "quality gate passes.",
    {
        "data_source": "Training images: local folder or gs:// prefix (<root>/<class>/<file>), a manifest "
                       "(.csv/.jsonl), or tfds:NAME[:CONFIG].",
        "validation_source": "Optional separate validation images.",
        "test_source": "Optional separate test images.",
        "validation_fraction": "Share of each class held out for validation when no validation_source.",
        "test_fraction": "Share of each class held out for testing when no test_source.",
        "split_seed": "Seed of the deterministic split.",
        "image_short_side": "prepare downscales images so the short side is at most this; 0: about 8/7 of the "
                            "model's input size, so training decodes small images.",
        "tfds_data_dir": "Directory of a pre-downloaded TFDS copy.",
        "max_rejected_fraction": "prepare fails when a larger share of files is rejected.",
        "backbone": "Backbone name (`kic backbones`) or a reference-algorithm model_id.",
        "pretrained_weights": "imagenet, none, or a .weights.h5 path / gs:// URI.",
        "image_size": "Input size; 0: the backbone's native size.",
        "base_model_uri": "An earlier kic model to continue from (incremental training).",
        "seed": "Training seed.",
        "gate_metric": "Metric of the quality gate; empty: the monitored metric.",
        "gate_minimum": "Smallest acceptable gate_metric.",
        "baseline_model_uri": "Optional model to compare with; export needs no regression beyond max_regression.",
        "max_regression": "Largest allowed drop of gate_metric below the baseline's.",
        "export_uri": "Optional local path or gs:// URI that also receives the exported package.",
        "tflite": "Also export TFLite: float32, float16, int8, or empty.",
        "top_k": "k of the top-k metrics and of the serving signature's top labels.",
        "batch_predict_source": "Optional images (folder, manifest or gs:// prefix) to predict with the exported "
                                "model; empty: no batch prediction.",
        **docs.hyperparameter_args(),
    },
)
training_pipeline = dsl.pipeline(name=PIPELINE_NAME)(training_pipeline)
