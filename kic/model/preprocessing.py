"""The one image preprocessing path shared by training, evaluation and serving.

Raw encoded bytes are decoded to RGB, turned upright by their EXIF
orientation, and resized to the backbone's input size with the configured
interpolation. Pixel scaling (for example to [-1, 1]) is not done here: it is
a layer inside the model, so nothing outside the model can get it wrong.

Everything here is plain TensorFlow graph ops (no ``tf.py_function``, no
custom ops), so the serving signature built from it runs in TF Serving.
"""

from __future__ import annotations

import tensorflow as tf

from kic.config import INTERPOLATIONS

# Transparent pixels are composited onto this colour, as prepare does
# (kic.data.images.ImageLimits.background), so a PNG with alpha looks the same
# to a served model as it did in training.
ALPHA_BACKGROUND = 255.0

# The functions here are written in explicit graph control flow (tf.case,
# tf.cond, tf.while_loop); autograph converting them for tf.data or a
# tf.function would change nothing but add seconds of tracing.
_graph_code = tf.autograph.experimental.do_not_convert

# libjpeg's accurate integer IDCT, the one Pillow (and so prepare) decodes
# with: the result is then the same pixels as Pillow's. TensorFlow's default,
# the fast IDCT, differs by up to 7 levels a pixel.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


@_graph_code
def decode_rgb(encoded: tf.Tensor, min_size: int = 0) -> tf.Tensor:
    """Decodes JPEG, PNG, GIF (first frame), BMP or WebP (first frame) bytes to uint8 [H, W, 3],
    upright: the EXIF orientation of a JPEG, PNG or WebP is applied, as prepare
    applies it (Pillow's ``ImageOps.exif_transpose``). prepare's own JPEGs carry
    no EXIF, so on training data this changes nothing.

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
        return tf.io.decode_image(gif_first_image(encoded), channels=3, expand_animations=False)

    def within_limit(decode):
        # Only a JPEG is decoded at a reduced scale; anything else is allocated at the size its header
        # declares, which a few hundred bytes can put at billions of pixels.
        def checked():
            height, width = declared_size(encoded)
            declares = tf.strings.format("the image header declares {} x {} pixels, more than the "
                                         f"{MAX_DECODED_PIXELS:,} kic decodes", (width, height))
            with tf.control_dependencies([tf.debugging.Assert(height * width <= MAX_DECODED_PIXELS, [declares])]):
                return decode()

        return checked

    magic = tf.strings.substr(encoded, 0, 4)
    may_have_alpha = tf.logical_or(tf.equal(magic, b"\x89PNG"), tf.equal(magic, b"RIFF"))
    image = tf.case([(tf.io.is_jpeg(encoded), lambda: _decode_jpeg(encoded, min_size)),
                     (is_animated_webp(encoded), lambda: _webp_first_frame(encoded)),
                     (may_have_alpha, within_limit(with_native_channels))],
                    default=within_limit(without_alpha), exclusive=False)
    image = apply_orientation(image, exif_orientation(encoded))
    image.set_shape([None, None, 3])
    return image


# --- Declared size ----------------------------------------------------------------
# What decoding an image would allocate, read from its header before it is
# decoded, as each of TensorFlow's decoders reads it: a PNG's IHDR; a GIF's
# logical screen (every frame is drawn on it); a BMP's BITMAPINFOHEADER (signed
# 32-bit width and height, the height negative for a top-down file); a WebP's
# VP8X canvas, else its VP8 frame header (14-bit sizes after the start code) or
# its VP8L header (14-bit sizes less one). A JPEG needs no such check: its
# decode is DCT-scaled to near the size the model needs (see decode_rgb), and
# libjpeg caps either side at 65,500.

# prepare's limit (kic.data.images.DEFAULT_MAX_PIXELS), so a served model
# decodes no image prepare would have refused for its size.
MAX_DECODED_PIXELS = 89_478_485


def _little_endian_at(data: tf.Tensor, position: int, length: int) -> tf.Tensor:
    return _big_endian(tf.reverse(_bytes_at(data, tf.constant(position, tf.int64), length), [0]))


def _big_endian_at(data: tf.Tensor, position: int, length: int) -> tf.Tensor:
    return _big_endian(_bytes_at(data, tf.constant(position, tf.int64), length))


def _signed_32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 2**31, value - 2**32, value)


@_graph_code
def declared_size(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width), int64, that a PNG, GIF, BMP or WebP header declares;
    (0, 0) for anything else. Where a header is cut short the missing bytes
    read as zeros."""
    magic = tf.strings.substr(encoded, 0, 4)
    webp_chunk = _text_at(encoded, tf.constant(12, tf.int64), 4)
    vp8l_bits = _little_endian_at(encoded, 21, 4)
    zero = tf.constant(0, tf.int64)
    sizes = [  # (is it, height, width), the first that is wins
        (tf.equal(magic, b"\x89PNG"), _big_endian_at(encoded, 20, 4), _big_endian_at(encoded, 16, 4)),
        (tf.equal(tf.strings.substr(encoded, 0, 3), b"GIF"),
         _little_endian_at(encoded, 8, 2), _little_endian_at(encoded, 6, 2)),
        (tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"),
         tf.abs(_signed_32(_little_endian_at(encoded, 22, 4))), tf.abs(_signed_32(_little_endian_at(encoded, 18, 4)))),
        (tf.logical_and(_is_webp(encoded), tf.equal(webp_chunk, b"VP8X")),
         _little_endian_at(encoded, 27, 3) + 1, _little_endian_at(encoded, 24, 3) + 1),
        (tf.logical_and(_is_webp(encoded), tf.equal(webp_chunk, b"VP8 ")),
         tf.bitwise.bitwise_and(_little_endian_at(encoded, 28, 2), 0x3FFF),
         tf.bitwise.bitwise_and(_little_endian_at(encoded, 26, 2), 0x3FFF)),
        (tf.logical_and(_is_webp(encoded), tf.equal(webp_chunk, b"VP8L")),
         tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l_bits, 14), 0x3FFF) + 1,
         tf.bitwise.bitwise_and(vp8l_bits, 0x3FFF) + 1),
    ]
    height, width = zero, zero
    for is_it, its_height, its_width in reversed(sizes):
        height, width = tf.where(is_it, its_height, height), tf.where(is_it, its_width, width)
    return height, width


# --- GIF: the first image alone -------------------------------------------------
# giflib, TensorFlow's GIF decoder, decodes every image of a file before
# TensorFlow keeps the first, so a GIF of many frames, each within the pixel
# limit, took memory by the frame (a 1.8 MB GIF of 1,000 frames of 1,000 x
# 1,000: 1 GB). The decoder is handed the file up to the end of its first
# image, then a trailer: the same first frame, one image's memory. A GIF is
# blocks after its header and global colour table: extensions (0x21, a label,
# then data sub-blocks) and images (0x2C, a 9-byte descriptor, a local colour
# table, the LZW code size, then sub-blocks), where sub-blocks are a length
# byte and that many bytes, ended by a zero length.

_GIF_EXTENSION, _GIF_IMAGE = 0x21, 0x2C
_AT_BLOCK, _IN_EXTENSION, _IN_IMAGE = 0, 1, 2


def _colour_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """A GIF's global or local colour table's size, from the flags byte that declares it."""
    present = tf.not_equal(tf.bitwise.bitwise_and(flags, 0x80), 0)
    return tf.where(present, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7)),
                    tf.constant(0, tf.int64))


@_graph_code
def gif_first_image(encoded: tf.Tensor) -> tf.Tensor:
    """A GIF cut after its first image, with a trailer; anything else, or a
    GIF whose first image's end cannot be found, as it is (the decoder then
    says what is wrong with it)."""
    size = _size(encoded)

    def step(position, state, end):
        head = tf.cast(_bytes_at(encoded, position, 10), tf.int64)
        at_block, in_sub_blocks = tf.equal(state, _AT_BLOCK), tf.not_equal(state, _AT_BLOCK)
        ends_sub_blocks = tf.logical_and(in_sub_blocks, tf.equal(head[0], 0))
        image_at = tf.logical_and(at_block, tf.equal(head[0], _GIF_IMAGE))
        extension_at = tf.logical_and(at_block, tf.equal(head[0], _GIF_EXTENSION))
        after_image_header = position + 10 + _colour_table_bytes(head[9]) + 1  # the LZW code size byte
        end = tf.where(tf.logical_and(ends_sub_blocks, tf.equal(state, _IN_IMAGE)), position + 1, end)
        position = tf.where(in_sub_blocks, position + 1 + head[0],
                            tf.where(image_at, after_image_header, position + 2))
        state = tf.where(ends_sub_blocks, tf.constant(_AT_BLOCK, tf.int64),
                         tf.where(image_at, tf.constant(_IN_IMAGE, tf.int64),
                                  tf.where(extension_at, tf.constant(_IN_EXTENSION, tf.int64), state)))
        # A trailer, or anything else where a block should start: no first image to cut after.
        lost = tf.logical_and(at_block, tf.logical_not(tf.logical_or(image_at, extension_at)))
        return tf.where(lost, size + 1, position), state, end

    def walking(position, _state, end):
        return tf.logical_and(tf.equal(end, 0), position < size)

    start = 13 + _colour_table_bytes(tf.cast(_bytes_at(encoded, tf.constant(10, tf.int64), 1)[0], tf.int64))
    _, _, end = tf.while_loop(walking, step, (start, tf.constant(_AT_BLOCK, tf.int64), tf.constant(0, tf.int64)),
                              maximum_iterations=tf.cast(size, tf.int32))
    is_gif = tf.equal(tf.strings.substr(encoded, 0, 3), b"GIF")
    cut = tf.strings.join([tf.strings.substr(encoded, 0, tf.cast(end, tf.int32)), b";"])
    return tf.where(tf.logical_and(is_gif, end > 0), cut, encoded)


# --- Animated WebP -------------------------------------------------------------
# TensorFlow's WebP decoder (2.21) corrupts the heap on an animated WebP, whatever
# the channels or expand_animations asked ("malloc(): corrupted top size", the
# process aborts). It takes that path when the VP8X chunk's animation flag is
# set, so such a file never reaches it: its first frame (the first ANMF chunk's
# ALPH/VP8/VP8L data) is rewrapped as a still VP8X WebP, whose flags are written
# here without the animation bit, decoded, and placed on the canvas at its
# offset over transparent pixels, which _to_rgb then composites onto the
# background (or, when the file declares no alpha, which are dropped): what
# Pillow (libwebp's animation decoder) gives prepare for the first frame. A
# file with ANMF chunks but no flag is taken the same way. Anything
# that cannot be a first frame (no ANMF chunk, a frame outside the canvas, a
# canvas over prepare's pixel limit) fails the decode with that reason, as
# any undecodable image does: the request fails with it, and batch predict
# gives that file an error row.

_WEBP_ANIMATION_FLAG = 0x02
_WEBP_ALPHA_FLAG = 0x10
_ANMF_HEADER = 16  # x/2, y/2, width-1, height-1, duration (3 bytes each), flags
# One-byte strings by value, to write a header from integers in the graph.
_BYTE_STRINGS = [bytes([value]) for value in range(256)]


def _is_webp(data: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(tf.equal(tf.strings.substr(data, 0, 4), b"RIFF"),
                          tf.equal(_text_at(data, tf.constant(8, tf.int64), 4), b"WEBP"))


@_graph_code
def is_animated_webp(encoded: tf.Tensor) -> tf.Tensor:
    """Whether encoded bytes are a WebP that declares or holds an animation."""

    def animated() -> tf.Tensor:
        flags = _bytes_at(encoded, tf.constant(20, tf.int64), 1)[0]
        flagged = tf.logical_and(tf.equal(_text_at(encoded, tf.constant(12, tf.int64), 4), b"VP8X"),
                                 tf.not_equal(tf.bitwise.bitwise_and(flags, _WEBP_ANIMATION_FLAG), 0))
        # An ANIM chunk without frames and without the flag decodes as a still image (or fails), safely.
        frame_start, frame_end = _webp_chunk(encoded, b"ANMF")
        return tf.logical_or(flagged, frame_start < frame_end)

    return tf.cond(_is_webp(encoded), animated, lambda: tf.constant(False))


def _little_endian_bytes(value: tf.Tensor, length: int) -> tf.Tensor:
    """int64 -> its ``length`` low bytes, least significant first, as a string."""
    shifts = tf.constant([8 * index for index in range(length)], tf.int64)
    values = tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, shifts), 0xFF)
    return tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), values))


def _webp_first_frame(encoded: tf.Tensor) -> tf.Tensor:
    """An animated WebP -> its first frame, uint8 RGB [canvas height, canvas width, 3] (see above)."""
    start, end = _webp_chunk(encoded, b"ANMF")
    header = tf.cast(_bytes_at(encoded, start, _ANMF_HEADER), tf.int64)

    def little(offset: int) -> tf.Tensor:
        return header[offset] + 256 * header[offset + 1] + 65536 * header[offset + 2]

    x, y, width, height = 2 * little(0), 2 * little(3), little(6) + 1, little(9) + 1
    canvas_height, canvas_width = declared_size(encoded)  # the VP8X chunk's canvas
    has_canvas = tf.equal(_text_at(encoded, tf.constant(12, tf.int64), 4), b"VP8X")
    canvas_width = tf.where(has_canvas, canvas_width, x + width)
    canvas_height = tf.where(has_canvas, canvas_height, y + height)
    checks = [
        tf.debugging.Assert(end - start > _ANMF_HEADER + 8,
                            ["the animated WebP has no frame (no ANMF chunk with image data)"]),
        tf.debugging.Assert(tf.logical_and(x + width <= canvas_width, y + height <= canvas_height),
                            ["the first frame of the animated WebP lies outside its canvas"]),
        tf.debugging.Assert(canvas_width * canvas_height <= MAX_DECODED_PIXELS,
                            ["the animated WebP's canvas has too many pixels"]),
    ]
    with tf.control_dependencies(checks):
        frame = _text_at(encoded, start + _ANMF_HEADER,
                         tf.cast(tf.minimum(end - start - _ANMF_HEADER, _size(encoded)), tf.int32))
    frame_size = tf.cast(tf.strings.length(frame), tf.int64)
    flags = tf.constant(_WEBP_ALPHA_FLAG, tf.int64)
    vp8x = tf.strings.join([b"VP8X", _little_endian_bytes(tf.constant(10, tf.int64), 4),
                            _little_endian_bytes(flags, 4), _little_endian_bytes(width - 1, 3),
                            _little_endian_bytes(height - 1, 3)])
    still = tf.strings.join([b"RIFF", _little_endian_bytes(4 + 18 + frame_size, 4), b"WEBP", vp8x, frame])
    image = tf.io.decode_image(still, channels=0, expand_animations=False)
    opaque = tf.fill(tf.concat([tf.shape(image)[:2], [1]], 0), tf.constant(255, tf.uint8))
    image = tf.cond(tf.equal(tf.shape(image)[-1], 4), lambda: image,
                    lambda: tf.concat([_to_rgb(image), opaque], -1))
    # By the size the bitstream decoded to: should it differ from the frame header's and not fit,
    # the negative padding fails the decode.
    decoded = tf.shape(image, out_type=tf.int64)
    image = tf.pad(image, [[y, canvas_height - y - decoded[0]], [x, canvas_width - x - decoded[1]], [0, 0]])
    # Pillow opens a WebP whose VP8X chunk declares no alpha as RGB, dropping the alpha of the
    # canvas (so black where no frame covers it) and of the frame.
    declares_alpha = tf.not_equal(tf.bitwise.bitwise_and(_bytes_at(encoded, tf.constant(20, tf.int64), 1)[0],
                                                         _WEBP_ALPHA_FLAG), 0)
    return tf.cond(tf.logical_and(has_canvas, tf.logical_not(declares_alpha)), lambda: image[..., :3],
                   lambda: _to_rgb(image))


def _decode_jpeg(encoded: tf.Tensor, min_size: int) -> tf.Tensor:
    """A JPEG -> uint8 [H, W, 3], DCT-scaled down to no less than ``min_size`` (see decode_rgb)."""

    def decode(ratio: int = 1) -> tf.Tensor:
        return tf.io.decode_jpeg(encoded, channels=3, ratio=ratio, dct_method=JPEG_DCT_METHOD)

    if not min_size:
        return decode()
    shape = tf.io.extract_jpeg_shape(encoded)
    short_side = tf.minimum(shape[0], shape[1])
    scaled = [(short_side >= min_size * ratio, lambda ratio=ratio: decode(ratio)) for ratio in (8, 4, 2)]
    return tf.case(scaled, default=decode, exclusive=False)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1..4] -> RGB, transparent pixels composited on the background."""
    channels = tf.shape(image)[-1]
    colour = tf.cond(channels < 3, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    has_alpha = tf.equal(channels % 2, 0)  # grey+alpha or RGBA
    alpha = tf.cond(has_alpha, lambda: tf.cast(image[..., -1:], tf.float32) / 255.0,
                    lambda: tf.ones_like(tf.cast(image[..., :1], tf.float32)))
    blended = tf.cast(colour, tf.float32) * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return tf.cast(tf.round(blended), tf.uint8)


# --- EXIF orientation ------------------------------------------------------------
# The Orientation tag (0x0112) of a TIFF structure's first IFD says how the
# stored pixels must be turned to be seen upright. JPEG carries the TIFF
# structure in an APP1 segment after "Exif\0\0", PNG in an eXIf chunk, WebP in
# a RIFF "EXIF" chunk. Anything missing, short or malformed reads as 1
# (upright as stored): a damaged EXIF block never fails a decode.

ORIENTATION_TAG = 0x0112
EXIF_HEADER = b"Exif\x00\x00"
# Bounds on the graph loops; real files need a handful of steps.
_MAX_JPEG_SEGMENTS = 64  # segments before the Exif APP1 (or the start of scan)
_MAX_RIFF_CHUNKS = 16
_MAX_IFD_ENTRIES = 128  # IFD0 entries read (Orientation is one of the first in practice)
_TIFF_SHORT, _TIFF_LONG = 3, 4


@_graph_code
def exif_orientation(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 in 1..8) of encoded JPEG, PNG or WebP bytes; 1 when there is none."""
    magic = tf.strings.substr(encoded, 0, 4)
    is_webp = tf.logical_and(tf.equal(magic, b"RIFF"),
                             tf.equal(_text_at(encoded, tf.constant(8, tf.int64), 4), b"WEBP"))
    start, end = tf.case([(tf.io.is_jpeg(encoded), lambda: _jpeg_exif(encoded)),
                          (tf.equal(magic, b"\x89PNG"), lambda: _png_exif(encoded)),
                          (is_webp, lambda: _webp_exif(encoded))],
                         default=lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), exclusive=False)
    return tf.cond(start < end, lambda: _tiff_orientation(encoded, start, end), lambda: tf.constant(1, tf.int32))


@_graph_code
def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns [H, W, C] stored pixels upright for an EXIF orientation 1..8, as
    Pillow's ``ImageOps.exif_transpose`` does.

    Every orientation is a transpose (5-8) followed by flips: 2 mirrors left
    to right, 4 top to bottom, 3 both (a half turn); 5 is the transpose
    itself, 6 (a phone held upright: turn clockwise) adds the left-right flip,
    8 the top-bottom flip and 7 both. One transpose and one reverse keep the
    traced graph small (8 branches of image ops would double export time)."""
    orientation = tf.convert_to_tensor(orientation, tf.int32)
    transposed = tf.cond(orientation >= 5, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    flip_top_bottom = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    flip_left_right = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_top_bottom, flip_left_right]))
    return tf.reverse(transposed, axes)


def _size(data: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.strings.length(data), tf.int64)


def _text_at(data: tf.Tensor, position: tf.Tensor, length: int) -> tf.Tensor:
    """Up to ``length`` bytes from ``position`` (int64, any value): empty outside the data."""
    size = _size(data)
    start = tf.where(tf.logical_and(position >= 0, position <= size), position, size)
    return tf.strings.substr(data, tf.cast(start, tf.int32), length)


def _bytes_at(data: tf.Tensor, position: tf.Tensor, length: int) -> tf.Tensor:
    """uint8 [length] from ``position``; zeros where that runs outside the data."""
    raw = tf.io.decode_raw(_text_at(data, position, length), tf.uint8)
    return tf.reshape(tf.pad(raw, [[0, length - tf.shape(raw)[0]]]), [length])


def _big_endian(values: tf.Tensor) -> tf.Tensor:
    """uint8 [..., n] -> int64 [...], most significant byte first."""
    n = values.shape[-1]
    weights = tf.constant([256 ** (n - 1 - index) for index in range(n)], tf.int64)
    return tf.reduce_sum(tf.cast(values, tf.int64) * weights, axis=-1)


def _unsigned(values: tf.Tensor, little_endian: tf.Tensor) -> tf.Tensor:
    return tf.where(little_endian, _big_endian(tf.reverse(values, [-1])), _big_endian(values))


def _jpeg_exif(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the TIFF structure in the first APP1 "Exif" segment, or (0, 0).

    Walks the marker segments after SOI: 0xFF, marker, 2-byte big-endian
    length that counts itself; stops at the start of scan or at anything that
    is not a marker."""

    def step(position, start, end, done, steps):
        header = _bytes_at(data, position, 4)
        is_marker = tf.equal(header[0], 0xFF)
        marker = header[1]
        length = _big_endian(header[2:4])
        fill = tf.logical_and(is_marker, tf.equal(marker, 0xFF))  # padding 0xFF before a marker
        is_exif = tf.logical_and(tf.logical_and(is_marker, tf.equal(marker, 0xE1)),
                                 tf.equal(_text_at(data, position + 4, 6), EXIF_HEADER))
        found = tf.logical_and(is_exif, length >= 8)
        stop = tf.reduce_any(tf.stack([tf.logical_not(is_marker), found, tf.equal(marker, 0xDA),
                                       tf.equal(marker, 0xD9), tf.logical_and(length < 2, tf.logical_not(fill))]))
        start = tf.where(found, position + 10, start)
        end = tf.where(found, position + 2 + length, end)
        position = tf.where(fill, position + 1, position + 2 + length)
        return position, start, end, stop, steps + 1

    zero = tf.constant(0, tf.int64)
    _, start, end, _, _ = tf.while_loop(
        lambda position, start, end, done, steps: tf.logical_and(tf.logical_not(done), steps < _MAX_JPEG_SEGMENTS),
        step, (tf.constant(2, tf.int64), zero, zero, tf.constant(False), tf.constant(0)))
    return start, end


def _png_exif(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the eXIf chunk's data, or (0, 0).

    Found by searching for the chunk type rather than walking the chunks: a
    PNG may hold hundreds of IDAT chunks, and eXIf may follow them. The
    4-byte length before the type must fit the file; a chance match inside
    compressed pixel data is then further caught by the TIFF header check."""
    pieces = tf.strings.split(data, sep=b"eXIf", maxsplit=1)
    size = _size(data)
    at = _size(pieces[0])
    length = _big_endian(_bytes_at(data, at - 4, 4))
    found = tf.logical_and(tf.logical_and(tf.equal(tf.size(pieces), 2), at >= 12), at + 4 + length <= size)
    start, end = _skip_exif_header(data, at + 4, at + 4 + length)
    return tf.where(found, start, 0), tf.where(found, end, 0)


def _webp_exif(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the RIFF "EXIF" chunk's data, or (0, 0)."""
    start, end = _webp_chunk(data, b"EXIF")
    return _skip_exif_header(data, start, end)


def _webp_chunk(data: tf.Tensor, fourcc: bytes) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) of the first RIFF chunk ``fourcc``'s data, or (0, 0):
    walks the chunks after the 12-byte RIFF header (FourCC, 4-byte
    little-endian size, data padded to an even length). ``end`` may lie past
    the data when the file is cut short."""

    def step(position, start, end, done, steps):
        header = _bytes_at(data, position, 8)
        size = _big_endian(tf.reverse(header[4:8], [0]))
        found = tf.equal(_text_at(data, position, 4), fourcc)
        start = tf.where(found, position + 8, start)
        end = tf.where(found, position + 8 + size, end)
        position = position + 8 + size + size % 2
        done = tf.logical_or(found, position + 8 > _size(data))
        return position, start, end, done, steps + 1

    zero = tf.constant(0, tf.int64)
    _, start, end, _, _ = tf.while_loop(
        lambda position, start, end, done, steps: tf.logical_and(tf.logical_not(done), steps < _MAX_RIFF_CHUNKS),
        step, (tf.constant(12, tf.int64), zero, zero, tf.constant(False), tf.constant(0)))
    return start, end


def _skip_exif_header(data: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Some writers put JPEG's "Exif\0\0" before the TIFF structure in PNG and WebP too (Pillow reads both)."""
    prefixed = tf.equal(_text_at(data, start, 6), EXIF_HEADER)
    return tf.where(prefixed, start + 6, start), end


def _tiff_orientation(data: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """The Orientation entry of IFD0 of the TIFF structure in data[start:end], or 1.

    TIFF header: "II" (little-endian) or "MM" (big-endian), 42, the offset of
    IFD0 from the header. An IFD: a 2-byte entry count, then 12-byte entries
    (tag, type, count, value); a SHORT or LONG value of count 1 sits in the
    entry itself. Every read is checked against ``end``; entries before a
    cut-off point still count, as Pillow reads them."""
    header = _bytes_at(data, start, 8)
    byte_order = _text_at(data, start, 2)
    little = tf.equal(byte_order, b"II")
    valid = tf.logical_and(tf.logical_or(little, tf.equal(byte_order, b"MM")),
                           tf.equal(_unsigned(header[2:4], little), 42))
    ifd = start + _unsigned(header[4:8], little)
    count = _unsigned(_bytes_at(data, ifd, 2), little)
    entries = tf.reshape(_bytes_at(data, ifd + 2, 12 * _MAX_IFD_ENTRIES), [_MAX_IFD_ENTRIES, 12])
    index = tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)
    present = tf.logical_and(index < count, ifd + 2 + 12 * (index + 1) <= end)
    tags = _unsigned(entries[:, 0:2], little)
    types = _unsigned(entries[:, 2:4], little)
    counts = _unsigned(entries[:, 4:8], little)
    values = tf.where(tf.equal(types, _TIFF_SHORT), _unsigned(entries[:, 8:10], little),
                      _unsigned(entries[:, 8:12], little))
    # Pillow also reads a SHORT repeated twice (warning about it) by its first value.
    inline = tf.logical_or(tf.logical_and(tf.equal(types, _TIFF_SHORT), tf.logical_or(tf.equal(counts, 1),
                                                                                     tf.equal(counts, 2))),
                           tf.logical_and(tf.equal(types, _TIFF_LONG), tf.equal(counts, 1)))
    matches = tf.reduce_all(tf.stack([present, tf.equal(tags, ORIENTATION_TAG), inline]), axis=0)
    value = tf.reduce_sum(tf.where(tf.equal(tf.cumsum(tf.cast(matches, tf.int32)), 1) & matches, values, 0))
    usable = tf.reduce_all(tf.stack([valid, ifd + 2 <= end, value >= 1, value <= 8]))
    return tf.cast(tf.where(usable, value, 1), tf.int32)


# Antialiasing (widening the kernel to the scale when shrinking) keeps fine
# detail from aliasing when an image shrinks by 2x or more. Below that it
# changes little, and it costs most of the time of a decode: prepare stores
# the model's input size on the short side, so neither training nor serving
# (which first takes a large upload down to that size, see decode_and_resize)
# pays it on photos of usual aspect ratios.
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


def downscale(image: tf.Tensor, short_side: int) -> tf.Tensor:
    """[H, W, 3] -> float32, downscaled with Lanczos (antialiased) so that its
    short side is ``short_side``, aspect ratio kept, as prepare downscales
    (``kic.data.images``, Pillow's LANCZOS): the other side is rounded the same
    way. An image no larger is returned as it is."""
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image, out_type=tf.int64)[0], tf.shape(image, out_type=tf.int64)[1]
    shorter = tf.minimum(height, width)
    scale = short_side / tf.cast(shorter, tf.float64)

    def scaled(side: tf.Tensor) -> tf.Tensor:
        return tf.maximum(tf.cast(tf.round(tf.cast(side, tf.float64) * scale), tf.int64), 1)

    target = tf.cast(tf.stack([tf.where(height <= width, tf.constant(short_side, tf.int64), scaled(height)),
                               tf.where(width < height, tf.constant(short_side, tf.int64), scaled(width))]), tf.int32)
    return tf.cond(shorter > short_side,
                   lambda: tf.clip_by_value(tf.image.resize(image, target, "lanczos3", antialias=True), 0.0, 255.0),
                   lambda: image)


@_graph_code
def decode_and_resize(encoded: tf.Tensor, size: int, interpolation: str, short_side: int = 0) -> tf.Tensor:
    """Encoded bytes -> float32 [size, size, 3] in [0, 255]: what the model is given.

    ``short_side`` is the short side prepare stored the training images at
    (``ModelInfo.image_short_side``). With it, an image is taken down the path
    its prepared copy took: decoded at no less than twice that (the DCT-scaled
    JPEG decode prepare's Pillow draft does too), downscaled with Lanczos to
    it, and only then resized to ``size``. A prepared record is never larger
    than ``short_side``, so for training and evaluation the first steps change
    nothing; for a raw file served, they are what keeps its pixels close to
    what training saw (measured: ``kic.serving.parity``). Without it (0), the
    image is decoded at no less than ``size`` and resized straight to it.
    """
    if not short_side:
        return resize(decode_rgb(encoded, min_size=size), size, interpolation)
    return resize(downscale(decode_rgb(encoded, min_size=2 * short_side), short_side), size, interpolation)


@_graph_code
def decode_prepared_and_resize(encoded: tf.Tensor, size: int, interpolation: str, short_side: int = 0) -> tf.Tensor:
    """``decode_and_resize`` for the records prepare writes, the same pixels
    for less work. Those are JPEGs, RGB, already upright, without EXIF, and
    no larger than the dataset's ``short_side``: on them the EXIF read and the
    downscale change nothing, so they are left out. Together they cost about
    twice the decode itself (measured in tf.data on 341x256 records: 367
    against 1,251 images/s), on every record of every uncached epoch."""
    image = _decode_jpeg(encoded, min_size=0 if short_side else size)
    image.set_shape([None, None, 3])
    return resize(image, size, interpolation)

