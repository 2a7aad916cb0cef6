"""Tests of kic.data.images.normalize_image on generated files."""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import warnings

import image_fixtures as fx
import pytest
from PIL import Image

from kic.data.images import (
    ALLOWED_FORMATS,
    ImageLimits,
    ImageRejected,
    NormalizedImage,
    RejectReason,
    normalize_image,
)

JPEG_TOLERANCE = 12


def decoded(result: NormalizedImage) -> Image.Image:
    image = Image.open(io.BytesIO(result.jpeg))
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (result.width, result.height)
    return image


def assert_colour(actual, expected, tolerance: int = JPEG_TOLERANCE) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def rejected(raw: bytes, limits: ImageLimits | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        normalize_image(raw, limits or ImageLimits())
    assert str(caught.value)  # always a readable sentence
    return caught.value


# --- the catalogue other tests build datasets from ---------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.fixture_matrix()))
def test_fixture_matrix_outcome(name):
    raw, expected = fx.fixture_matrix()[name]
    if expected is None:
        result = normalize_image(raw)
        decoded(result)
        assert result.sha256 == hashlib.sha256(raw).hexdigest()
    else:
        assert rejected(raw).reason == RejectReason(expected)


def test_fixture_matrix_has_good_and_bad_files():
    outcomes = [expected for _, expected in fx.fixture_matrix().values()]
    assert outcomes.count(None) >= 10
    # not_a_file is a FIFO or a device, which bytes cannot be: tests/test_untrusted_files.py makes them.
    assert {reason.value for reason in RejectReason} - set(outcomes) == {
        "too_large", "unsupported_mode", "bad_dimensions", "not_a_file"}


# --- formats and colour modes kept -------------------------------------------------------------


def test_rgb_jpeg_keeps_size_colour_and_hash():
    raw = fx.solid_jpeg(fx.RED, size=(64, 48))
    result = normalize_image(raw)
    assert (result.width, result.height) == (64, 48)
    assert (result.original_width, result.original_height) == (64, 48)
    assert result.original_format == "JPEG"
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert_colour(decoded(result).getpixel((10, 10)), fx.RED)


def test_colour_is_stored_at_full_resolution():
    """4:4:4, not Pillow's default 4:2:0: a one-pixel red/blue stripe keeps its colours (training/serving parity)."""
    from PIL import JpegImagePlugin

    image = Image.new("RGB", (64, 48), fx.BLUE)
    for x in range(0, 64, 2):
        image.paste(fx.RED, (x, 0, x + 1, 48))
    stored = decoded(normalize_image(fx.encode(image, "PNG")))
    assert JpegImagePlugin.get_sampling(stored) == 0
    assert_colour(stored.getpixel((10, 10)), fx.RED, tolerance=40)
    assert_colour(stored.getpixel((11, 10)), fx.BLUE, tolerance=40)


def test_cmyk_jpeg_becomes_rgb_with_right_colour():
    result = normalize_image(fx.cmyk_jpeg((0, 255, 255, 0)))
    assert result.original_format == "JPEG"
    assert_colour(decoded(result).getpixel((5, 5)), fx.RED)


def test_grayscale_png():
    result = normalize_image(fx.solid_png(100, mode="L"))
    assert_colour(decoded(result).getpixel((5, 5)), (100, 100, 100), tolerance=2)


def test_16_bit_png_is_scaled_not_clipped():
    result = normalize_image(fx.grey16_png(32768))
    assert_colour(decoded(result).getpixel((5, 5)), (128, 128, 128), tolerance=2)


def test_16_bit_png_maps_black_and_white_to_the_ends():
    image = decoded(normalize_image(fx.grey16_ramp_png()))
    assert image.size == (3, 1)
    # Three 1-pixel columns share JPEG blocks, so only the order and rough levels are checked.
    values = [image.getpixel((x, 0))[0] for x in range(3)]
    assert values[0] < 60 < values[1] < 200 < values[2]


def test_16_bit_tiff_is_scaled():
    raw = fx.encode(Image.new("I;16", (16, 16), 65535 // 4), "TIFF")
    result = normalize_image(raw)
    assert result.original_format == "TIFF"
    assert_colour(decoded(result).getpixel((5, 5)), (64, 64, 64), tolerance=2)


def test_32_bit_float_tiff_in_unit_range_is_scaled():
    raw = fx.encode(Image.new("F", (16, 16), 0.5), "TIFF")
    assert_colour(decoded(normalize_image(raw)).getpixel((5, 5)), (128, 128, 128), tolerance=2)


def test_palette_png():
    image = decoded(normalize_image(fx.palette_png(size=(40, 30))))
    assert_colour(image.getpixel((5, 15)), fx.RED)
    assert_colour(image.getpixel((34, 15)), fx.BLUE)


def test_palette_png_transparent_entry_becomes_background():
    image = decoded(normalize_image(fx.palette_png(size=(40, 30), transparent_left=True)))
    assert_colour(image.getpixel((5, 15)), fx.WHITE)
    assert_colour(image.getpixel((34, 15)), fx.BLUE)


def test_rgba_transparent_pixels_become_background_not_stored_colour():
    image = decoded(normalize_image(fx.rgba_png(size=(40, 30))))
    assert_colour(image.getpixel((5, 15)), fx.WHITE)  # stored as transparent black
    assert_colour(image.getpixel((30, 15)), fx.BLUE)


def test_rgba_half_transparent_is_blended_with_background():
    # A 16x16 half-transparent red block keeps clear of JPEG chroma bleeding.
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    image.paste((*fx.RED, 128), (0, 0, 16, 16))
    output = decoded(normalize_image(fx.encode(image, "PNG")))
    assert_colour(output.getpixel((6, 6)), (255, 127, 127))


def test_alpha_is_composited_on_the_configured_background():
    limits = ImageLimits(background=(0, 255, 0))
    image = decoded(normalize_image(fx.rgba_png(size=(40, 30)), limits))
    assert_colour(image.getpixel((5, 15)), fx.GREEN)


def test_grey_with_alpha():
    image = decoded(normalize_image(fx.grey_alpha_png(size=(40, 30))))
    assert_colour(image.getpixel((5, 15)), fx.WHITE)
    assert_colour(image.getpixel((34, 15)), (0, 0, 0))


def test_rgb_png_with_trns_colour_key_is_transparent():
    image = Image.new("RGB", (32, 16), fx.RED)
    image.paste(fx.BLUE, (16, 0, 32, 16))
    raw = fx.encode(image, "PNG", transparency=fx.BLUE)
    output = decoded(normalize_image(raw))
    assert_colour(output.getpixel((4, 8)), fx.RED)
    assert_colour(output.getpixel((28, 8)), fx.WHITE)


def test_16_bit_png_transparent_grey_level_becomes_background():
    image = Image.new("I;16", (16, 8), 1000)
    image.paste(Image.new("I;16", (8, 8), 40000), (8, 0))
    output = decoded(normalize_image(fx.encode(image, "PNG", transparency=40000)))
    assert_colour(output.getpixel((2, 4)), (4, 4, 4), tolerance=3)
    assert_colour(output.getpixel((13, 4)), fx.WHITE, tolerance=3)


def test_gif_transparent_index_becomes_background():
    image = Image.new("P", (16, 16), 0)
    image.putpalette([*fx.RED, *fx.BLUE])
    image.paste(1, (8, 0, 16, 16))
    output = decoded(normalize_image(fx.encode(image, "GIF", transparency=0)))
    assert_colour(output.getpixel((2, 8)), fx.WHITE)
    assert_colour(output.getpixel((13, 8)), fx.BLUE)


def test_lab_tiff_is_converted_colorimetrically():
    # Pillow's own LAB->RGB convert reinterprets the bands; mid lightness must come out mid grey.
    raw = fx.encode(Image.new("LAB", (16, 16), (128, 128, 128)), "TIFF")
    assert_colour(decoded(normalize_image(raw)).getpixel((5, 5)), (119, 119, 119), tolerance=4)


def test_mode_without_a_known_rgb_conversion_is_rejected_not_guessed():
    from kic.data.images import _to_rgb

    with pytest.raises(ImageRejected) as caught:
        _to_rgb(Image.new("HSV", (4, 4)), (255, 255, 255))
    assert caught.value.reason == RejectReason.UNSUPPORTED_MODE


def test_one_bit_png():
    image = decoded(normalize_image(fx.one_bit_png(size=(40, 30))))
    assert_colour(image.getpixel((5, 15)), (0, 0, 0))
    assert_colour(image.getpixel((34, 15)), fx.WHITE)


def test_animated_gif_keeps_first_frame():
    result = normalize_image(fx.animated_gif((fx.RED, fx.GREEN, fx.BLUE)))
    assert result.original_format == "GIF"
    assert_colour(decoded(result).getpixel((5, 5)), fx.RED)


def test_animated_webp_keeps_first_frame():
    result = normalize_image(fx.animated_webp((fx.GREEN, fx.RED)))
    assert result.original_format == "WEBP"
    assert_colour(decoded(result).getpixel((5, 5)), fx.GREEN)


@pytest.mark.parametrize(("image_format", "options"), [
    ("WEBP", {"lossless": True}),
    ("WEBP", {"quality": 90}),
    ("BMP", {}),
    ("TIFF", {}),
    ("TIFF", {"compression": "tiff_lzw"}),
    ("GIF", {}),
    ("PNG", {}),
    ("JPEG", {"progressive": True, "quality": 95}),
])
def test_each_allowed_format_is_kept_with_its_colour(image_format, options):
    raw = fx.encode(Image.new("RGB", (40, 30), fx.BLUE), image_format, **options)
    result = normalize_image(raw)
    assert result.original_format == image_format
    assert (result.width, result.height) == (40, 30)
    assert_colour(decoded(result).getpixel((20, 15)), fx.BLUE)


def test_mpo_camera_jpeg_is_kept_as_its_first_picture():
    result = normalize_image(fx.mpo_jpeg())
    assert result.original_format == "MPO"
    assert_colour(decoded(result).getpixel((5, 5)), fx.GREEN)


def test_png_named_jpg_is_judged_by_content():
    raw, expected = fx.fixture_matrix()["png_named_as.jpg"]
    assert expected is None
    assert normalize_image(raw).original_format == "PNG"


def test_allowed_formats_are_the_documented_six_plus_mpo():
    assert ALLOWED_FORMATS == {"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO"}


# --- orientation and size ------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise_and_moves_the_marker():
    result = normalize_image(fx.exif_rotated_jpeg(orientation=6, size=(40, 24)))
    assert (result.original_width, result.original_height) == (40, 24)
    assert (result.width, result.height) == (24, 40)
    image = decoded(result)
    # The stored top-left 8x8 marker is displayed at the top-right.
    assert_colour(image.getpixel((20, 3)), fx.RED, tolerance=40)
    assert_colour(image.getpixel((3, 3)), fx.WHITE, tolerance=20)
    assert_colour(image.getpixel((20, 36)), fx.WHITE, tolerance=20)
    # Orientation is applied once: the output carries no EXIF to apply it again.
    assert image.getexif().get(0x0112) is None


def test_exif_orientation_3_rotates_half_a_turn():
    image = decoded(normalize_image(fx.exif_rotated_jpeg(orientation=3, size=(40, 24))))
    assert image.size == (40, 24)
    assert_colour(image.getpixel((36, 20)), fx.RED, tolerance=40)
    assert_colour(image.getpixel((3, 3)), fx.WHITE, tolerance=20)


def test_large_image_is_downscaled_to_the_short_side():
    raw = fx.encode(fx.two_colour_image((1500, 900), fx.RED, fx.BLUE), "PNG")
    result = normalize_image(raw)
    assert (result.width, result.height) == (1000, 600)
    assert (result.original_width, result.original_height) == (1500, 900)
    image = decoded(result)
    assert_colour(image.getpixel((100, 300)), fx.RED)
    assert_colour(image.getpixel((900, 300)), fx.BLUE)


def test_portrait_image_is_downscaled_on_its_width():
    raw = fx.encode(Image.new("RGB", (300, 500), fx.GREEN), "PNG")
    result = normalize_image(raw, ImageLimits(short_side=150))
    assert (result.width, result.height) == (150, 250)


def test_large_jpeg_keeps_colours_and_exact_size():
    # 2600x2400 lets libjpeg decode at 1/2 scale before the final resize.
    raw = fx.encode(fx.two_colour_image((2600, 2400), fx.RED, fx.BLUE), "JPEG", quality=90)
    result = normalize_image(raw)
    assert (result.original_width, result.original_height) == (2600, 2400)
    assert (result.width, result.height) == (650, 600)
    image = decoded(result)
    assert_colour(image.getpixel((100, 300)), fx.RED)
    assert_colour(image.getpixel((550, 300)), fx.BLUE)


def test_large_cmyk_jpeg_with_reduced_decoding():
    raw = fx.encode(Image.new("CMYK", (2400, 1800), (0, 255, 255, 0)), "JPEG", quality=90)
    result = normalize_image(raw)
    assert (result.width, result.height) == (800, 600)
    assert_colour(decoded(result).getpixel((400, 300)), fx.RED)


def test_large_exif_rotated_jpeg_with_reduced_decoding():
    image = Image.new("RGB", (2400, 1600), fx.WHITE)
    image.paste(fx.RED, (0, 0, 400, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    result = normalize_image(fx.encode(image, "JPEG", quality=90, exif=exif.tobytes()))
    assert (result.original_width, result.original_height) == (2400, 1600)
    assert (result.width, result.height) == (600, 900)
    output = decoded(result)
    assert_colour(output.getpixel((580, 20)), fx.RED)
    assert_colour(output.getpixel((20, 20)), fx.WHITE)


def test_large_truncated_jpeg_is_still_caught_with_reduced_decoding():
    raw = fx.encode(fx.two_colour_image((2600, 2400), fx.RED, fx.BLUE), "JPEG", quality=90)
    assert rejected(fx.truncated(raw, 0.6)).reason == RejectReason.TRUNCATED


def test_small_image_is_not_upscaled():
    result = normalize_image(fx.solid_png(fx.RED, size=(120, 80)))
    assert (result.width, result.height) == (120, 80)


def test_image_exactly_at_short_side_is_untouched():
    result = normalize_image(fx.solid_png(fx.RED, size=(900, 600)))
    assert (result.width, result.height) == (900, 600)


def test_jpeg_quality_setting_is_used():
    raw = fx.encode(fx.noise_image((200, 150)), "PNG")
    low = normalize_image(raw, ImageLimits(jpeg_quality=30))
    high = normalize_image(raw, ImageLimits(jpeg_quality=95))
    assert len(low.jpeg) < len(high.jpeg)


def test_sha256_is_of_the_original_bytes_not_the_output():
    raw = fx.solid_png(fx.BLUE)
    result = normalize_image(raw)
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert result.sha256 != hashlib.sha256(result.jpeg).hexdigest()


# --- rejections ----------------------------------------------------------------------------------


def test_empty_file():
    assert rejected(b"").reason == RejectReason.EMPTY


def test_too_large_is_checked_before_parsing():
    # Not even an image: the size check comes first.
    error = rejected(b"x" * 101, ImageLimits(max_bytes=100))
    assert error.reason == RejectReason.TOO_LARGE
    assert "101" in str(error)


def test_jpeg_truncated_at_half():
    error = rejected(fx.truncated(fx.noise_jpeg(), 0.5))
    assert error.reason == RejectReason.TRUNCATED
    assert "JPEG" in str(error)


@pytest.mark.parametrize(("image_format", "options", "expected"), [
    ("PNG", {}, RejectReason.TRUNCATED),
    ("GIF", {}, RejectReason.TRUNCATED),
    ("BMP", {}, RejectReason.TRUNCATED),
    ("TIFF", {}, RejectReason.TRUNCATED),
    ("WEBP", {"lossless": True}, RejectReason.TRUNCATED),
    ("WEBP", {"quality": 80}, RejectReason.TRUNCATED),
    ("JPEG", {"progressive": True}, RejectReason.TRUNCATED),
    # libtiff writes the directory at the end, so a cut LZW TIFF has no readable header.
    ("TIFF", {"compression": "tiff_lzw"}, RejectReason.CORRUPT),
])
def test_other_formats_cut_short_are_rejected(image_format, options, expected):
    raw = fx.encode(fx.noise_image(), image_format, **options)
    for fraction in (0.5, 0.95):
        assert rejected(fx.truncated(raw, fraction)).reason == expected


def test_jpeg_with_zeroed_huffman_tables_is_corrupt():
    assert rejected(fx.jpeg_with_zeroed_huffman_tables()).reason == RejectReason.CORRUPT


def test_jpeg_with_zeroed_start_of_scan_is_corrupt():
    raw = bytearray(fx.noise_jpeg())
    start_of_scan = raw.index(b"\xff\xda")
    raw[start_of_scan:start_of_scan + 16] = bytes(16)
    assert rejected(bytes(raw)).reason == RejectReason.CORRUPT


def test_png_with_damaged_pixel_data_is_rejected():
    raw = bytearray(fx.encode(fx.noise_image(), "PNG"))
    middle = len(raw) // 2
    raw[middle:middle + 32] = bytes(32)
    assert rejected(bytes(raw)).reason in (RejectReason.CORRUPT, RejectReason.TRUNCATED)


def test_html_named_jpg_is_not_an_image():
    error = rejected(fx.HTML_PAGE)
    assert error.reason == RejectReason.NOT_AN_IMAGE
    assert "HTML" in str(error)


def test_text_starting_like_a_bitmap_is_not_an_image():
    assert rejected(b"BMW and other notes\n").reason == RejectReason.NOT_AN_IMAGE


def test_damaged_header_of_a_known_format_is_corrupt():
    error = rejected(fx.solid_png()[:20])
    assert error.reason == RejectReason.CORRUPT
    assert "PNG" in str(error)


@pytest.mark.parametrize(("raw", "name"), [
    (fx.encode(Image.new("RGB", (32, 32)), "ICO"), "ICO"),
    (fx.encode(Image.new("RGB", (32, 32)), "PPM"), "PPM"),
    (fx.fake_heic(), "HEIC"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
])
def test_other_image_formats_are_unsupported_and_named(raw, name):
    error = rejected(raw)
    assert error.reason == RejectReason.UNSUPPORTED_FORMAT
    assert name in str(error)


def test_dimension_bomb_is_rejected_from_the_header():
    # 30000x30000 claimed by a 100-byte file whose pixel data is a few bytes:
    # only a header check can answer TOO_MANY_PIXELS rather than CORRUPT.
    raw = fx.png_header_only(30000, 30000)
    assert len(raw) < 200
    assert rejected(raw).reason == RejectReason.TOO_MANY_PIXELS


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_own_pixel_cap_applies_where_pillow_only_warns():
    # 12000x8000 = 96M pixels: above the default cap, below Pillow's error threshold.
    assert rejected(fx.png_header_only(12000, 8000)).reason == RejectReason.TOO_MANY_PIXELS


def test_pillow_bomb_warning_raised_as_error_is_still_a_rejection():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rejected(fx.png_header_only(12000, 8000)).reason == RejectReason.TOO_MANY_PIXELS


def test_pixel_cap_is_the_callers_not_pillows_global():
    raw = fx.solid_png(fx.RED, size=(200, 200))
    assert normalize_image(raw).width == 200
    error = rejected(raw, ImageLimits(max_pixels=200 * 200 - 1))
    assert error.reason == RejectReason.TOO_MANY_PIXELS
    assert "200x200" in str(error)


def test_side_too_long_for_jpeg_is_rejected_before_decoding():
    error = rejected(fx.png_header_only(70000, 2))
    assert error.reason == RejectReason.BAD_DIMENSIONS
    assert "65,500" in str(error)


def test_long_side_that_fits_after_resizing_is_kept():
    raw = fx.encode(Image.new("L", (70000, 20), 90), "PNG")
    result = normalize_image(raw, ImageLimits(short_side=10))
    assert (result.width, result.height) == (35000, 10)


def test_pillow_globals_are_not_changed():
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for raw, _ in fx.fixture_matrix().values():
        try:
            normalize_image(raw, ImageLimits(max_pixels=10_000))
        except ImageRejected:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_damage_never_escapes_as_another_exception():
    """Flipped bytes in every format: each mutant is kept as a valid JPEG or
    rejected with a reason, never an uncaught Pillow error."""
    rng = random.Random(1234)
    sources = [raw for raw, expected in fx.fixture_matrix().values() if expected is None]
    outcomes = set()
    for _ in range(300):
        raw = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        try:
            decoded(normalize_image(bytes(raw)))
            outcomes.add("kept")
        except ImageRejected as error:
            outcomes.add(error.reason)
    assert "kept" in outcomes and len(outcomes) > 2


# --- API details ---------------------------------------------------------------------------------


def test_rejection_survives_pickling_for_worker_processes():
    error = rejected(b"")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.reason == RejectReason.EMPTY
    assert copy.detail == error.detail == str(copy)


def test_reject_reason_values_are_stable_strings():
    assert RejectReason.NOT_AN_IMAGE == "not_an_image"
    assert RejectReason("too_many_pixels") is RejectReason.TOO_MANY_PIXELS


@pytest.mark.parametrize("bad", [
    {"short_side": 0}, {"max_pixels": -1}, {"jpeg_quality": 0}, {"jpeg_quality": 101},
    {"background": (0, 0)}, {"background": (0, 0, 256)},
])
def test_invalid_limits_are_refused(bad):
    with pytest.raises(ValueError, match="ImageLimits"):
        ImageLimits(**bad)


def test_background_list_is_normalised_to_a_tuple():
    assert ImageLimits(background=[1, 2, 3]).background == (1, 2, 3)
