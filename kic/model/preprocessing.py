"""The one image preprocessing path shared by training, evaluation and serving.

Raw encoded bytes are decoded to RGB and resized to the backbone's input size
with the configured interpolation. Pixel scaling (for example to [-1, 1]) is
not done here: it is a layer inside the model, so nothing outside the model
can get it wrong.
"""

from __future__ import annotations

import tensorflow as tf

from kic.config import INTERPOLATIONS

# Transparent pixels are composited onto this colour, as prepare does
# (kic.data.images.ImageLimits.background), so a PNG with alpha looks the same
# to a served model as it did in training.
ALPHA_BACKGROUND = 255.0


def decode_rgb(encoded: tf.Tensor, min_size: int = 0) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF (first frame), BMP or WebP bytes to uint8 [H, W, 3].

    With ``min_size``, a JPEG whose short side is at least twice that is
    decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (the largest that keeps
    the short side >= min_size): several times faster than a full decode
    followed by a large downscale, for nearly the same pixels.
    """

    def with_native_channels():
        # PNG and WebP may carry alpha. They are decoded with their own channel
        # count (grey, grey+alpha, RGB, RGBA), because asking TensorFlow for 4
        # channels of a palette PNG without transparency yields alpha 1, not 255.
        return _to_rgb(tf.io.decode_image(encoded, channels=0, expand_animations=False))

    def without_alpha():  # GIF and BMP
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    def jpeg():
        if not min_size:
            return tf.io.decode_jpeg(encoded, channels=3)
        shape = tf.io.extract_jpeg_shape(encoded)
        short_side = tf.minimum(shape[0], shape[1])
        scaled = [(short_side >= min_size * ratio, lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=3,
                                                                                          ratio=ratio))
                  for ratio in (8, 4, 2)]
        return tf.case(scaled, default=lambda: tf.io.decode_jpeg(encoded, channels=3), exclusive=False)

    magic = tf.strings.substr(encoded, 0, 4)
    may_have_alpha = tf.logical_or(tf.equal(magic, b"\x89PNG"), tf.equal(magic, b"RIFF"))
    image = tf.case([(tf.io.is_jpeg(encoded), jpeg), (may_have_alpha, with_native_channels)],
                    default=without_alpha, exclusive=False)
    image.set_shape([None, None, 3])
    return image


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1..4] -> RGB, transparent pixels composited on the background."""
    channels = tf.shape(image)[-1]
    colour = tf.cond(channels < 3, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    has_alpha = tf.equal(channels % 2, 0)  # grey+alpha or RGBA
    alpha = tf.cond(has_alpha, lambda: tf.cast(image[..., -1:], tf.float32) / 255.0,
                    lambda: tf.ones_like(tf.cast(image[..., :1], tf.float32)))
    blended = tf.cast(colour, tf.float32) * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return tf.cast(tf.round(blended), tf.uint8)


# Antialiasing (widening the kernel to the scale when shrinking) keeps fine
# detail from aliasing when an image shrinks by 2x or more. Below that it
# changes little, and it costs most of the time of a decode: prepare stores
# about 8/7 of the model's input size, so training never pays it, while
# serving's large uploads (a PNG photo, say) still get it.
ANTIALIAS_FROM_SHRINK = 2.0


def resize(image: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    """Resizes to [size, size, 3] float32 holding whole numbers in [0, 255].

    The aspect ratio is not kept (the reference algorithm's behaviour). Values
    are clipped (cubic and lanczos kernels overshoot) and rounded, so that the
    pixels fit uint8 exactly: training keeps them as uint8 until the model.
    Antialiased when either side shrinks by ANTIALIAS_FROM_SHRINK or more
    (``nearest`` and ``area`` never are: they have no kernel to widen).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    pixels = tf.cast(image, tf.float32)

    def resized(antialias: bool) -> tf.Tensor:
        return tf.image.resize(pixels, [size, size], method=interpolation, antialias=antialias)

    if interpolation in ("nearest", "area"):
        result = resized(False)
    else:
        largest_side = tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
        result = tf.cond(largest_side >= ANTIALIAS_FROM_SHRINK * size, lambda: resized(True), lambda: resized(False))
    return tf.round(tf.clip_by_value(result, 0.0, 255.0))


def decode_and_resize(encoded: tf.Tensor, size: int, interpolation: str) -> tf.Tensor:
    return resize(decode_rgb(encoded, min_size=size), size, interpolation)

