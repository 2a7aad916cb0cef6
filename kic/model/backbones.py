"""Builds a backbone (an entry of ``kic.model.backbone_registry``) as a
Keras Applications feature extractor.

The feature extractor takes float32 RGB pixels in [0, 255] and scales them
itself (a ``PixelScaling`` layer), so everything downstream of the decoder
(training, evaluation, serving) feeds the same thing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kic.errors import ParameterError, Problem
from kic.model import weights as weights_module
from kic.model.backbone_registry import Backbone, image_size_problems, resolve

if TYPE_CHECKING:
    import keras


def _checked_image_size(backbone: Backbone, image_size: int | None) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int | None):
        raise TypeError(f"image_size must be an integer, got {image_size!r}")
    if not image_size:
        return backbone.input_size
    problems = image_size_problems(backbone, image_size)
    if problems:
        raise ParameterError(problems)
    return image_size


def _construct(backbone: Backbone, scaled: keras.KerasTensor, weights: str | None) -> keras.Model:
    import keras

    constructor = getattr(keras.applications, backbone.constructor)
    kwargs = dict(backbone.options)
    try:
        return constructor(include_top=False, weights=weights, input_tensor=scaled,
                           input_shape=tuple(scaled.shape[1:]), pooling="avg", **kwargs)
    except ValueError as error:
        if weights == weights_module.IMAGENET and weights_module.is_download_failure(error):
            raise weights_module.download_error(backbone, error) from None
        # Keras checks its arguments (input size against the ImageNet variants, for one).
        raise ParameterError([Problem("backbone", backbone.name, f"cannot be built ({backbone.constructor}, "
                                                                 f"{kwargs}): {error}")]) from None
    except Exception as error:
        if weights == weights_module.IMAGENET and weights_module.is_download_failure(error):
            raise weights_module.download_error(backbone, error) from None
        raise


def _with_imagenet_input_stack(backbone: Backbone, model: keras.Model) -> keras.Model:
    """Gives a weights=None EfficientNet (V1) the same input stack as the ImageNet one.

    With ImageNet weights Keras adds a Rescaling(1/sqrt(std)) after its Normalization layer
    (compatibility with the original implementation); built with weights=None it does not. The
    layer has no variables, so a weights file fits either graph - and silently computes other
    features in the wrong one. kic therefore always uses the ImageNet graph, and starts the
    Normalization at the ImageNet statistics so random-init and pretrained inputs match too.
    """
    if backbone.family != "EfficientNet":
        return model
    import keras

    from kic import compat

    IMAGENET_STDDEV_RGB = compat.efficientnet_imagenet_stddev_rgb()  # Keras' constant, by its name
    mean_rgb = (0.485, 0.456, 0.406)  # keras.src.applications.efficientnet stores these in the weights

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if isinstance(layer, keras.layers.Normalization):
            outputs = keras.layers.Rescaling([1.0 / math.sqrt(std) for std in IMAGENET_STDDEV_RGB],
                                             name="imagenet_std_compat")(outputs)
        return outputs

    normalizations = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    if len(normalizations) != 1:
        raise RuntimeError(f"unexpected EfficientNet graph in this Keras version: "
                           f"{len(normalizations)} Normalization layers")
    normalization = normalizations[0]
    normalization.adapt_mean.assign(mean_rgb)
    normalization.adapt_variance.assign([std ** 2 for std in IMAGENET_STDDEV_RGB])
    normalization.finalize_state()
    # Fresh layers (not the same layer objects in two graphs, which would leave each layer's
    # input ambiguous to anything that reads it, like the batch-norm recalibration), same weights.
    clone = keras.models.clone_model(model, call_function=call)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # its mean and variance follow the weights just set
    return clone


def build_feature_extractor(backbone: Backbone | str, *, image_size: int | None = None,
                            weights: str | None = weights_module.DEFAULT) -> keras.Model:
    """[batch, size, size, 3] float32 RGB in [0, 255] -> [batch, features] (global average pool).

    ``weights``: "imagenet" (Keras' download cache), "none" (random init), or a local path /
    gs:// URI of a Keras weights file (``.weights.h5``, or a Keras Applications ``.h5``).
    """
    import keras

    from kic.model.pixel_scaling import PixelScaling

    if isinstance(backbone, str):
        backbone = resolve(backbone)
    size = _checked_image_size(backbone, image_size)
    choice = weights_module.choice(weights)
    pixels = keras.Input(shape=(size, size, 3), dtype="float32", name="pixels")
    scaled = PixelScaling(backbone.pixel_scaling, name="pixel_scaling")(pixels)
    if choice == weights_module.IMAGENET:
        with weights_module.download_timeout():
            model = _construct(backbone, scaled, weights_module.IMAGENET)
    else:
        model = _with_imagenet_input_stack(backbone, _construct(backbone, scaled, None))
        if choice is not None:
            weights_module.load_file(backbone, model, choice)
    return keras.Model(model.inputs[0], model.outputs[0], name=backbone.name)
