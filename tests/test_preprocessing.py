"""The shared decode path: served bytes look like the images training saw."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kic.data.images import ImageLimits, normalize_image
from kic.model import preprocessing


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_transparency_is_composited_like_prepare_does(fmt, options):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[..., :3] = (200, 40, 10)
    pixels[:, :4, 3] = 0  # left half fully transparent
    pixels[:, 4:, 3] = 128  # right half half transparent
    raw = _encode(Image.fromarray(pixels, "RGBA"), fmt, **options)
    served = preprocessing.decode_rgb(tf.constant(raw)).numpy().astype(int)
    prepared = np.asarray(Image.open(io.BytesIO(normalize_image(raw).jpeg)).convert("RGB"), dtype=int)
    assert ImageLimits().background == (255, 255, 255) == (preprocessing.ALPHA_BACKGROUND,) * 3
    np.testing.assert_array_equal(served[:, :4], 255)
    np.testing.assert_allclose(served[:, 4:], [[[227, 147, 133]] * 4] * 8, atol=1)
    # prepare re-encodes as JPEG, whose chroma subsampling blurs the sharp edge at column 4
    interior = [0, 1, 6, 7]
    np.testing.assert_allclose(served[:, interior], prepared[:, interior], atol=6)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "PNG"])
def test_every_format_decodes_to_rgb(fmt):
    raw = _encode(Image.new("RGB", (6, 5), (30, 120, 220)), fmt)
    image = preprocessing.decode_rgb(tf.constant(raw)).numpy()
    assert image.shape == (5, 6, 3)
    np.testing.assert_allclose(image[2, 2], (30, 120, 220), atol=3)


def test_resize_keeps_values_in_range_for_overshooting_kernels():
    checker = np.indices((16, 16)).sum(axis=0) % 2 * 255
    image = tf.constant(np.stack([checker] * 3, axis=-1), dtype=tf.uint8)
    for method in preprocessing.INTERPOLATIONS:
        resized = preprocessing.resize(image, 7, method).numpy()
        assert resized.shape == (7, 7, 3) and resized.min() >= 0 and resized.max() <= 255, method


def _palette_png(transparent: bool) -> bytes:
    if transparent:
        return _encode(Image.new("RGBA", (8, 8), (200, 30, 90, 0)).convert("P"), "PNG", transparency=0)
    return _encode(Image.new("RGB", (8, 8), (200, 30, 90)).quantize(4), "PNG")


@pytest.mark.parametrize("raw, expected", [
    (_palette_png(transparent=False), (200, 30, 90)),  # TensorFlow's 4-channel decode gives alpha 1 here
    (_palette_png(transparent=True), (255, 255, 255)),
    (_encode(Image.new("LA", (8, 8), (77, 0)), "PNG"), (255, 255, 255)),
    (_encode(Image.new("LA", (8, 8), (77, 255)), "PNG"), (77, 77, 77)),
    (_encode(Image.new("I;16", (8, 8), 30000), "PNG"), (117, 117, 117)),
    (_encode(Image.new("RGB", (8, 8), (10, 20, 200)), "WEBP", lossless=True), (10, 20, 200)),
])
def test_png_and_webp_colour_types_match_prepare(raw, expected):
    served = preprocessing.decode_rgb(tf.constant(raw)).numpy()
    prepared = np.asarray(Image.open(io.BytesIO(normalize_image(raw).jpeg)).convert("RGB"))
    np.testing.assert_allclose(served[4, 4], expected, atol=1)
    np.testing.assert_allclose(served[4, 4], prepared[4, 4], atol=2)


def test_large_jpegs_decode_at_reduced_scale_with_nearly_the_same_pixels():
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 960)[None, :, None] * np.ones((720, 1, 3))
    raw = _encode(Image.fromarray(np.clip(gradient + rng.normal(0, 8, (720, 960, 3)), 0, 255).astype(np.uint8)),
                  "JPEG", quality=95)
    assert preprocessing.decode_rgb(tf.constant(raw), min_size=224).shape == (360, 480, 3)  # 1/2 scale
    assert preprocessing.decode_rgb(tf.constant(raw), min_size=90).shape == (90, 120, 3)  # 1/8 scale
    assert preprocessing.decode_rgb(tf.constant(raw)).shape == (720, 960, 3)
    fast = preprocessing.decode_and_resize(tf.constant(raw), 224, "bilinear").numpy()
    full = preprocessing.resize(preprocessing.decode_rgb(tf.constant(raw)), 224, "bilinear").numpy()
    assert np.abs(fast - full).mean() < 2.0
