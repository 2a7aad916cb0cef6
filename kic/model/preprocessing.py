"""The one image preprocessing path shared by training, evaluation and serving.

Raw encoded bytes are decoded to RGB and resized to the backbone's input size
with the configured interpolation. Pixel scaling (for example to [-1, 1]) is
not done here: it is a layer inside the model, so nothing outside the model
can get it wrong.
"""

from __future__ import annotations

import tensorflow as tf

INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF (first frame), BMP or WebP bytes to uint8 [H, W, 3]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    """Resizes to [size, size, 3] float32 in [0, 255].

    The aspect ratio is not kept (the reference algorithm's behaviour); values
    are clipped because cubic and lanczos kernels overshoot.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method=interpolation,
                              antialias=interpolation not in ("nearest", "area"))
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_and_resize(encoded: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    return resize(decode_rgb(encoded), size, interpolation)
