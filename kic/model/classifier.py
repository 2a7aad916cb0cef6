"""The classification model: backbone feature extractor -> Dropout -> Dense.

Also decides, for incremental training, whether the top layer is kept or
built anew (the reference algorithm's ``reinitialize_top_layer`` truth table).
"""

from __future__ import annotations

import dataclasses

import keras

from kic.config import HyperparameterError, Problem, TrainingConfig
from kic.model.model_info import ModelInfo

BACKBONE_LAYER = "backbone"
DROPOUT_LAYER = "top_dropout"
DENSE_LAYER = "top_dense"
INPUT_NAME = "pixels"

@dataclasses.dataclass(frozen=True)
class HeadPlan:
    """What happens to the top layer, and why (for the training log)."""

    start_from_base_model: bool
    new_head: bool
    reason: str


def plan_head(config: TrainingConfig, base: ModelInfo | None, class_names: tuple[str, ...]) -> HeadPlan:
    """Applies the truth table; raises HyperparameterError for impossible cells."""
    choice = config.reinitialize_top_layer
    if base is None:
        if choice == "False":
            raise HyperparameterError([Problem(
                "reinitialize_top_layer", choice,
                "'False' keeps an existing top layer, but a pretrained backbone has none; use "
                "'Auto' or 'True', or give an earlier model of ours to continue from")])
        return HeadPlan(False, True, "new top layer on the pretrained backbone")
    if base.binary_mode != config.binary_mode:
        if choice == "False":
            raise HyperparameterError([Problem(
                "reinitialize_top_layer", choice,
                f"the earlier model has binary_mode={base.binary_mode}, this run binary_mode="
                f"{config.binary_mode}: its top layer cannot be kept")])
        return HeadPlan(True, True, "new top layer: binary_mode differs from the earlier model's")
    if tuple(base.class_names) != tuple(class_names):
        if choice == "False":
            raise HyperparameterError([Problem(
                "reinitialize_top_layer", choice,
                f"the earlier model's classes {list(base.class_names)} differ from the data's "
                f"{list(class_names)}: its top layer cannot be kept; use 'Auto' or 'True'")])
        return HeadPlan(True, True, "new top layer: the class set differs from the earlier model's")
    if choice == "True":
        return HeadPlan(True, True, "new top layer on the earlier model (reinitialize_top_layer=True)")
    return HeadPlan(True, False, "continuing from the earlier model with its top layer")


def add_head(features_model: keras.Model, *, num_classes: int, config: TrainingConfig,
             seed: int) -> keras.Model:
    """Dropout -> Dense(L2) on a model that maps pixels to a feature vector."""
    inputs = features_model.inputs[0]
    features = features_model.outputs[0]
    units = 1 if config.binary_mode else num_classes
    x = keras.layers.Dropout(config.dropout_rate, seed=seed, name=DROPOUT_LAYER)(features)
    logits = keras.layers.Dense(
        units, kernel_regularizer=keras.regularizers.L2(config.regularizers_l2),
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name=DENSE_LAYER,
        dtype="float32")(x)  # logits (and so the loss) in float32 under a mixed precision policy
    return keras.Model(inputs, logits, name="classifier")


def build_new(extractor: keras.Model, *, image_size: int, num_classes: int, config: TrainingConfig,
              seed: int) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    extractor.name = BACKBONE_LAYER
    features = extractor(inputs)
    return add_head(keras.Model(inputs, features), num_classes=num_classes, config=config, seed=seed)


def cut_head(model: keras.Model) -> keras.Model:
    """The earlier model up to (not including) its top Dropout."""
    features = model.get_layer(DROPOUT_LAYER).input
    return keras.Model(model.inputs[0], features)


def head_settings(model: keras.Model) -> dict[str, float]:
    """The dropout rate and L2 factor the model's top layer really has, by
    their hyperparameter names (a kept top layer keeps its own)."""
    regularizer = model.get_layer(DENSE_LAYER).kernel_regularizer
    return {"dropout_rate": float(model.get_layer(DROPOUT_LAYER).rate),
            "regularizers_l2": float(getattr(regularizer, "l2", 0.0)) if regularizer is not None else 0.0}


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_LAYER)


def set_trainable(model: keras.Model, *, train_only_top_layer: bool) -> None:
    backbone = backbone_of(model)
    # trainable=False on a Keras 3 BatchNormalization also runs it in inference
    # mode, so a frozen backbone keeps its statistics as well as its weights.
    # Moving statistics of a trainable backbone are recomputed before each
    # validation (kic.training.batch_norm), so their momentum does not matter.
    backbone.trainable = not train_only_top_layer
