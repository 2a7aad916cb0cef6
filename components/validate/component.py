"""validate: reject bad hyperparameters before any step does work."""

from kfp import dsl

from kic.components import docs
from kic.components.image import IMAGE


def validate(
    backbone: str = "mobilenet_v2_100_224",
    image_size: int = 0,
    image_short_side: int = 0,
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
) -> int:
    arguments = dict(locals())
    from kic import steps

    return steps.validate_step(**arguments)


validate.__doc__ = docs.docstring(
    "Checks every hyperparameter against the contract, and the backbone, at the start of the pipeline, so "
    "that a bad value fails the run in seconds with one message listing every problem.",
    {
        "backbone": "Backbone name or reference-algorithm model_id.",
        "image_size": "Input size; 0: the backbone's native size.",
        "image_short_side": "Short side prepare stores; 0: derived from the model's input size (about 8/7 of it).",
        **docs.hyperparameter_args(),
    },
    {"Output": "The short side, in pixels, that prepare should store."},
)
validate = dsl.component(base_image=IMAGE, install_kfp_package=False)(validate)
