"""A test-only backbone: two small convolutions with batch normalisation.

Where a test needs *a* backbone rather than MobileNet (training, evaluation,
export), this one builds and trains in a fraction of the time. It goes through
the same registry and builder as the real backbones: ``registered()`` adds it
to ``kic.model.backbone_registry.REGISTRY`` and its constructor to
``keras.applications``, which is where the builder looks constructors up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import MappingProxyType

import keras
import pytest

from kic.model import backbone_registry

NAME = "tiny_test_net"
IMAGE_SIZE = 32  # what tests train it at
CONSTRUCTOR = "KicTinyTestNet"
BACKBONE = backbone_registry.Backbone(name=NAME, family="TinyTest", input_size=32, pixel_scaling="tf",
                                      constructor=CONSTRUCTOR, min_size=8)


def tiny_test_net(include_top=False, weights=None, input_tensor=None, input_shape=None, pooling="avg",
                  **_options) -> keras.Model:
    """Keras Applications' constructor signature; ImageNet weights it has none."""
    if weights is not None:
        raise ValueError("tiny_test_net has no pretrained weights")
    x = input_tensor if input_tensor is not None else keras.Input(input_shape)
    # As the applications do: the model starts at the input that input_tensor grows from.
    inputs = keras.utils.get_source_inputs(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=NAME)


def train_options(backbone: str = NAME, **overrides):
    """kic.training.TrainOptions for a quick, repeatable run from scratch."""
    from kic.training import TrainOptions

    return TrainOptions(**{"backbone": backbone, "pretrained_weights": "none", "image_size": IMAGE_SIZE, "seed": 1,
                           **overrides})


@contextlib.contextmanager
def registered() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backbone_registry, "REGISTRY", MappingProxyType({**backbone_registry.REGISTRY, NAME: BACKBONE}))
        patch.setattr(keras.applications, CONSTRUCTOR, tiny_test_net, raising=False)
        yield NAME
