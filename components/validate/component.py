"""validate: reject bad values of any pipeline parameter before any step does work."""

from kfp import dsl

from kic.components import docs
from kic.components.image import CPU_IMAGE


def validate(
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
    accelerator_type: str = "",
    accelerator_count: int = 0,
    train_replica_count: int = 1,
    train_machine_type: str = "",
    tf_data_service: str = "",
    precision: str = "auto",
    jit_compile: str = "auto",
    checkpoint_uri: str = "",
    checkpoint_every_steps: int = 1000,
    gate_metric: str = "",
    gate_minimum: float = 0.0,
    baseline_model_uri: str = "",
    max_regression: float = 0.01,
    allow_removed_classes: bool = False,
    export_uri: str = "",
    tflite: str = "",
    serving_skew_action: str = "block",
    top_k: int = 5,
    batch_predict_source: str = "",
    batch_predict_format: str = "jsonl",
    vertex_model_display_name: str = "",
    vertex_parent_model: str = "",
    vertex_serving_image: str = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
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
    from kic.runtime import steps

    return steps.validate_step(**arguments)


validate.__doc__ = docs.docstring(
    "Checks every pipeline parameter at the start of the pipeline (the hyperparameters against the contract, "
    "backbone and image size, split fractions, sources and model URIs that must exist, the pretrained weights, "
    "the quality gate, export, batch-prediction and model-registry options, train's Vertex AI machines), so that a "
    "bad value fails the run in seconds with one message listing every problem.",
    docs.pipeline_parameter_args(),
    {"Output": "The short side, in pixels, that prepare should store."},
)
validate = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(validate)
