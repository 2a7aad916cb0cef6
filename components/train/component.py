"""train: fine-tune a pretrained backbone; all 25 hyperparameters are typed inputs."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kic.components import docs
from kic.components.image import GPU_IMAGE


def train(
    examples: Input[Dataset],
    model: Output[Model],
    training_metrics: Output[Metrics],
    backbone: str = "mobilenet_v2_100_224",
    pretrained_weights: str = "imagenet",
    image_size: int = 0,
    base_model_uri: str = "",
    base_model_fingerprint: str = "",
    pretrained_weights_fingerprint: str = "",
    seed: int = 42,
    required_gpus: int = 0,
    tf_data_service: str = "",
    precision: str = "auto",
    jit_compile: str = "auto",
    checkpoint_uri: str = "",
    checkpoint_every_steps: int = 1000,
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
    arguments = dict(locals())
    from kic.runtime import steps

    steps.train_step(**arguments)


train.__doc__ = docs.docstring(
    "Fine-tunes a Keras Applications backbone with a Dropout + Dense top layer on prepared data. "
    "Hyperparameters are validated (all problems at once) before any data is read.",
    {
        "examples": "The prepared dataset from prepare.",
        **docs.parameter_args("backbone", "pretrained_weights", "image_size", "base_model_uri"),
        "base_model_fingerprint": "What base_model_uri holds now (from snapshot): part of the cache key.",
        "pretrained_weights_fingerprint": "What the pretrained weights file holds now (from snapshot; empty for "
                                          "imagenet and none): part of the cache key.",
        **docs.parameter_args("seed"),
        "required_gpus": "Fail at once when fewer GPUs are visible (the pipeline passes accelerator_count, what it "
                         "asked the platform for); 0: train on whatever the machine has.",
        **docs.parameter_args("tf_data_service", "precision", "jit_compile", "checkpoint_uri",
                              "checkpoint_every_steps"),
        **docs.hyperparameter_args(),
    },
    {
        "model": "The trained Keras model (best epoch), model_info.json, label map, history, TensorBoard logs.",
        "training_metrics": "Training and validation metrics of the best epoch.",
    },
)
train = dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)(train)
