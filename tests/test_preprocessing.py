"""The shared decode path: served bytes look like the images training saw."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from image_fixtures import (
    PARITY_KINDS,
    animated_gif,
    encode,
    exif_block,
    exif_rotated_jpeg,
    gif_blocks,
    gif_frame_bomb,
    jpeg_with_app1,
    noise_image,
    noise_jpeg,
    shape_photo,
    solid_jpeg,
    solid_png,
)
from PIL import Image, ImageOps

from kic.config import INTERPOLATIONS
from kic.data.images import ImageLimits, normalize_image
from kic.model import preprocessing


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_transparency_is_composited_like_prepare_does(fmt, options):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[..., :3] = (200, 40, 10)
    pixels[:, :4, 3] = 0  # left half fully transparent
    pixels[:, 4:, 3] = 128  # right half half transparent
    raw = encode(Image.fromarray(pixels, "RGBA"), fmt, **options)
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
    raw = encode(Image.new("RGB", (6, 5), (30, 120, 220)), fmt)
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
        return encode(Image.new("RGBA", (8, 8), (200, 30, 90, 0)).convert("P"), "PNG", transparency=0)
    return encode(Image.new("RGB", (8, 8), (200, 30, 90)).quantize(4), "PNG")


@pytest.mark.parametrize("raw, expected", [
    (_palette_png(transparent=False), (200, 30, 90)),  # TensorFlow's 4-channel decode gives alpha 1 here
    (_palette_png(transparent=True), (255, 255, 255)),
    (encode(Image.new("LA", (8, 8), (77, 0)), "PNG"), (255, 255, 255)),
    (encode(Image.new("LA", (8, 8), (77, 255)), "PNG"), (77, 77, 77)),
    (encode(Image.new("I;16", (8, 8), 30000), "PNG"), (117, 117, 117)),
    (encode(Image.new("RGB", (8, 8), (10, 20, 200)), "WEBP", lossless=True), (10, 20, 200)),
])
def test_png_and_webp_colour_types_match_prepare(raw, expected):
    served = preprocessing.decode_rgb(tf.constant(raw)).numpy()
    prepared = np.asarray(Image.open(io.BytesIO(normalize_image(raw).jpeg)).convert("RGB"))
    np.testing.assert_allclose(served[4, 4], expected, atol=1)
    np.testing.assert_allclose(served[4, 4], prepared[4, 4], atol=2)


def test_large_jpegs_decode_at_reduced_scale_with_nearly_the_same_pixels():
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 960)[None, :, None] * np.ones((720, 1, 3))
    raw = encode(Image.fromarray(np.clip(gradient + rng.normal(0, 8, (720, 960, 3)), 0, 255).astype(np.uint8)),
                  "JPEG", quality=95)
    assert preprocessing.decode_rgb(tf.constant(raw), min_size=224).shape == (360, 480, 3)  # 1/2 scale
    assert preprocessing.decode_rgb(tf.constant(raw), min_size=90).shape == (90, 120, 3)  # 1/8 scale
    assert preprocessing.decode_rgb(tf.constant(raw)).shape == (720, 960, 3)
    fast = preprocessing.decode_and_resize(tf.constant(raw), 224, "bilinear").numpy()
    full = preprocessing.resize(preprocessing.decode_rgb(tf.constant(raw)), 224, "bilinear").numpy()
    assert np.abs(fast - full).mean() < 2.0


# --- EXIF orientation: applied in the graph, as prepare's Pillow applies it ----------------

EXIF_FORMATS = {"JPEG": {"quality": 95}, "PNG": {}, "WEBP": {"lossless": True}}
# As serving and tf.data run them: traced graphs (eagerly, tf.case and tf.while_loop are Python control flow).
graph_orientation = tf.function(preprocessing.exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
graph_decode = tf.function(preprocessing.decode_rgb, input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.parametrize("byte_order", ["II", "MM"])
@pytest.mark.parametrize("fmt", list(EXIF_FORMATS))
def test_every_exif_orientation_is_applied_like_pillow_does(fmt, byte_order):
    stored = noise_image((40, 24), seed=1)  # no two orientations of it look alike
    for orientation in range(1, 9):
        raw = encode(stored, fmt, exif=exif_block(orientation, byte_order), **EXIF_FORMATS[fmt])
        assert byte_order.encode() + (b"*\x00" if byte_order == "II" else b"\x00*") in raw
        upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB"), dtype=int)
        assert upright.shape[:2] == ((24, 40) if orientation < 5 else (40, 24))
        assert int(graph_orientation(raw)) == orientation
        served = graph_decode(raw).numpy().astype(int)
        assert served.shape == upright.shape, orientation
        # JPEG: the same libjpeg IDCT as Pillow's, but do not tie the test to its last bit.
        np.testing.assert_allclose(served, upright, atol=2 if fmt == "JPEG" else 0, err_msg=str(orientation))


def test_orientation_goes_with_the_reduced_scale_jpeg_decode():
    raw = exif_rotated_jpeg(6, size=(400, 240))
    served = preprocessing.decode_rgb(tf.constant(raw), min_size=50).numpy()
    assert served.shape == (100, 60, 3)  # decoded at 1/4 scale (60x100), then turned upright
    assert served[:2, -2:].min(axis=(0, 1))[0] > 200 and served[:2, -2:, 1:].max() < 60  # red marker top right


def _tiff_with_entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
    return b"Exif\x00\x00II*\x00" + struct.pack("<IHHHI", 8, 1, tag, kind, count) + value.ljust(4, b"\x00") + bytes(4)


# Damaged EXIF blocks, and whether Pillow (so prepare) still finds orientation 6 in them.
BROKEN_EXIF = {
    "header only": (b"Exif\x00\x00", 1),
    "TIFF header cut short": (b"Exif\x00\x00II*\x00", 1),
    "unknown byte order": (b"Exif\x00\x00XX" + exif_block(6)[8:], 1),
    "IFD0 outside the data": (b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFFF0) + bytes(8), 1),
    "entry cut short": (exif_block(6)[:6 + 8 + 2 + 6], 1),
    "orientation 0": (_tiff_with_entry(0x0112, 3, 1, struct.pack("<H", 0)), 1),
    "orientation 9": (_tiff_with_entry(0x0112, 3, 1, struct.pack("<H", 9)), 1),
    "orientation as text": (_tiff_with_entry(0x0112, 2, 2, b"6\x00"), 1),
    "orientation as LONG": (_tiff_with_entry(0x0112, 4, 1, struct.pack("<I", 6)), 6),
    "orientation repeated": (_tiff_with_entry(0x0112, 3, 2, struct.pack("<HH", 6, 6)), 6),
    "entry count past the end": (exif_block(6)[:6 + 8] + struct.pack("<H", 500) + exif_block(6)[6 + 10:6 + 22], 6),
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data", "ignore:Metadata Warning")
@pytest.mark.parametrize("payload, orientation", BROKEN_EXIF.values(), ids=BROKEN_EXIF.keys())
def test_a_damaged_exif_block_never_fails_and_reads_as_pillow_reads_it(payload, orientation):
    plain = noise_jpeg((40, 24), seed=2)
    raw = jpeg_with_app1(payload, plain)
    assert int(graph_orientation(raw)) == orientation
    served = graph_decode(raw).numpy().astype(int)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB"), dtype=int)
    assert served.shape == upright.shape == ((24, 40, 3) if orientation == 1 else (40, 24, 3))
    np.testing.assert_allclose(served, upright, atol=2)


def test_files_without_exif_keep_their_orientation():
    for raw in (solid_jpeg(size=(30, 20)), solid_png(size=(30, 20)), encode(Image.new("RGB", (30, 20)), "GIF"),
                encode(Image.new("RGB", (30, 20)), "BMP"), b"RIFF\x04\x00\x00\x00WEBP", b"\xff\xd8", b""):
        assert int(graph_orientation(raw)) == 1
    assert preprocessing.decode_rgb(tf.constant(solid_jpeg(size=(30, 20)))).shape == (20, 30, 3)


# --- A raw file takes the path its prepared copy took -------------------------------------------

graph_downscaled = tf.function(lambda raw: preprocessing.downscale(preprocessing.decode_rgb(raw, min_size=512), 256),
                               input_signature=[tf.TensorSpec([], tf.string)])


@pytest.mark.parametrize("kind, size", [("JPEG", None), ("JPEG", (2600, 1950)), ("JPEG EXIF-rotated", None),
                                        ("JPEG CMYK", None), ("PNG alpha", None), ("JPEG small", None)])
def test_serving_downscales_a_raw_file_as_prepare_stored_it(kind, size):
    """Same size (prepare's rounding), nearly the same pixels: a DCT-scaled decode
    to at least twice the short side (Pillow's draft) and Lanczos down to it."""
    _, default_size, encoder = PARITY_KINDS[kind]
    raw = encoder(shape_photo("square", size or default_size, seed=5))
    stored = normalize_image(raw, ImageLimits(short_side=256, jpeg_quality=100)).jpeg  # ~lossless, to see the resize
    prepared = np.asarray(Image.open(io.BytesIO(stored)), dtype=np.float32)
    served = graph_downscaled(raw).numpy()
    assert served.shape == prepared.shape
    assert np.abs(served - prepared).mean() < 0.8  # of 255; Pillow rounds to 8 bits between its two passes
    # ... and then the model's resize follows, as for the prepared record.
    np.testing.assert_allclose(
        preprocessing.decode_and_resize(tf.constant(raw), 224, "bilinear", short_side=256).numpy(),
        preprocessing.resize(served, 224, "bilinear").numpy(), atol=1e-3)


def test_a_prepared_record_is_not_touched_by_the_downscale():
    record = normalize_image(noise_jpeg((400, 300)), ImageLimits(short_side=256)).jpeg
    decoded = preprocessing.decode_rgb(tf.constant(record))
    np.testing.assert_array_equal(preprocessing.downscale(decoded, 256).numpy(), decoded.numpy())


@pytest.mark.parametrize("kind", ["JPEG EXIF-rotated", "PNG alpha"])
def test_training_decodes_prepared_records_to_the_pixels_serving_makes_of_them(kind):
    """Training's short cut (no EXIF read, no downscale) is only a short cut: on what prepare stores,
    at any short side and with every interpolation, its pixels are serving's."""
    _, size, encoder = PARITY_KINDS[kind]
    raw = encoder(shape_photo("circle", size, seed=3))
    for short_side in (0, 40, 256):
        record = tf.constant(normalize_image(raw, ImageLimits(short_side=short_side or 256)).jpeg)
        for interpolation in INTERPOLATIONS:
            np.testing.assert_array_equal(
                preprocessing.decode_prepared_and_resize(record, 32, interpolation, short_side).numpy(),
                preprocessing.decode_and_resize(record, 32, interpolation, short_side).numpy(),
                err_msg=f"{kind}, short side {short_side}, {interpolation}")


def _webp(image: Image.Image, **options) -> bytes:
    return encode(image, "WEBP", **options)


# Each format as Pillow writes it, and where its header keeps the width and height.
_DECLARING = {
    "PNG": lambda image: encode(image, "PNG"),
    "GIF": lambda image: encode(image, "GIF"),
    "BMP": lambda image: encode(image, "BMP"),
    "WebP lossy (VP8)": lambda image: _webp(image, quality=80),
    "WebP lossless (VP8L)": lambda image: _webp(image, lossless=True),
    # Transparency takes libwebp to the extended format (an opaque RGBA image stays VP8).
    "WebP extended (VP8X)": lambda image: _webp(Image.merge("RGBA", (*image.split(), image.convert("L"))),
                                                quality=80),
}


@pytest.mark.parametrize("fmt", list(_DECLARING))
def test_the_declared_size_is_the_size_the_decoder_gives(fmt):
    raw = _DECLARING[fmt](noise_image((37, 23)))
    height, width = (int(side) for side in preprocessing.declared_size(tf.constant(raw)))
    assert (height, width) == tuple(tf.io.decode_image(raw, expand_animations=False).shape[:2]) == (23, 37)


def test_a_jpeg_or_unknown_bytes_declare_nothing():
    for raw in (noise_jpeg((37, 23)), b"", b"not an image at all"):
        assert [int(side) for side in preprocessing.declared_size(tf.constant(raw))] == [0, 0]


def _declaring(fmt: str, width: int, height: int) -> bytes:
    """A small real file of ``fmt`` whose header is rewritten to declare width x height."""
    raw = bytearray(_DECLARING[fmt](noise_image((40, 30))))
    if fmt == "PNG":
        struct.pack_into(">II", raw, 16, width, height)
    elif fmt == "GIF":
        struct.pack_into("<HH", raw, 6, width, height)
    elif fmt == "BMP":
        struct.pack_into("<ii", raw, 18, width, -height)  # top-down: a negative height
    elif "VP8X" in fmt:
        raw[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif "VP8L" in fmt:
        struct.pack_into("<I", raw, 21, (width - 1) | (height - 1) << 14)
    else:
        struct.pack_into("<HH", raw, 26, width, height)
    return bytes(raw)


@pytest.mark.parametrize("fmt", list(_DECLARING))
def test_an_image_declaring_more_pixels_than_prepare_accepts_is_refused_before_it_is_decoded(fmt):
    """A few hundred bytes can declare billions of pixels, which the decoder would allocate: a served
    model refuses them as prepare does, with the size, before any decoder runs."""
    width, height = (16_383, 16_383) if "WebP" in fmt and "VP8X" not in fmt else (60_000, 50_000)
    assert width * height > preprocessing.MAX_DECODED_PIXELS
    raw = _declaring(fmt, width, height)
    assert [int(side) for side in preprocessing.declared_size(tf.constant(raw))] == [height, width]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"header declares {width} x {height} pixels, more than the 89,478,485 kic decodes"):
        preprocessing.decode_and_resize(tf.constant(raw), 32, "bilinear", short_side=48)


def test_serving_decodes_up_to_the_pixels_prepare_accepts():
    assert preprocessing.MAX_DECODED_PIXELS == ImageLimits().max_pixels  # kic.model sits below kic.data


def test_a_real_decompression_bomb_is_refused_and_an_ordinary_file_is_not():
    bomb = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(bomb, "PNG")  # 90 million pixels in about 10 KB
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(tf.errors.InvalidArgumentError, match="header declares"):
        preprocessing.decode_rgb(tf.constant(bomb.getvalue()))
    ordinary = _declaring("GIF", 40, 30)  # the header rewritten to its own size
    assert preprocessing.decode_rgb(tf.constant(ordinary)).shape == (30, 40, 3)


def test_a_gif_reaches_the_decoder_cut_after_its_first_image():
    """giflib decodes every image of a GIF before TensorFlow keeps the first: a GIF of many frames,
    each within the pixel limit, is cut after its first image (extensions before it kept), so serving
    it takes one image's memory. The first frame is the same, cut or not."""
    bomb = gif_frame_bomb(2000)  # 3.7 MB; decoded whole, 2 GB
    blocks = gif_blocks(bomb)
    first_image = next(index for index, block in enumerate(blocks) if block[0] == 0x2C)
    assert preprocessing.gif_first_image(tf.constant(bomb)).numpy() == b"".join(blocks[:first_image + 1]) + b";"
    assert preprocessing.decode_rgb(tf.constant(bomb)).shape == (1000, 1000, 3)
    extensions = io.BytesIO()  # a comment, the loop count, transparency: extensions before the first image
    frames = [noise_image((40, 30), seed=seed).convert("P") for seed in range(3)]
    frames[0].save(extensions, "GIF", save_all=True, append_images=frames[1:], comment=b"hello", loop=0,
                   transparency=0)
    for raw in (animated_gif(), extensions.getvalue(), encode(noise_image((40, 30)), "GIF")):
        cut = preprocessing.gif_first_image(tf.constant(raw)).numpy()
        assert len(cut) <= len(raw)
        np.testing.assert_array_equal(tf.io.decode_gif(cut)[0], tf.io.decode_gif(raw)[0])
    for raw in (b"GIF89a", encode(noise_image((40, 30)), "GIF")[:200], noise_jpeg()):  # cut short, or no GIF
        assert preprocessing.gif_first_image(tf.constant(raw)).numpy() == raw
