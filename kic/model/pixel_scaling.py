"""Pixel scaling as a Keras layer, so it travels inside every saved model.

Each backbone expects its input pixels scaled the way its ImageNet weights
were trained. Doing that in a layer (rather than in the input pipeline) means
training, evaluation and the serving signature cannot disagree. The modes
reproduce ``keras.applications.<family>.preprocess_input`` exactly; the layer
is stateless (no batch statistics) and registered for ``safe_mode`` reloads.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kic.model.backbone_registry import PIXEL_SCALINGS

# Keras' ImageNet statistics (keras.src.applications.imagenet_utils).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

MODES = PIXEL_SCALINGS


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown pixel scaling mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


@keras.saving.register_keras_serializable(package="kic")
class PixelScaling(keras.layers.Layer):
    """Maps float RGB pixels in [0, 255] to what a backbone expects (see ``MODES``)."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = check_mode(mode)
        self.supports_masking = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            bgr = ops.flip(x, axis=-1)
            return bgr - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_MEAN_RGB, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(TORCH_STD_RGB, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["mode"] = self.mode
        return config
