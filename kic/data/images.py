"""Validation and normalisation of one uploaded image file.

``normalize_image`` turns the raw bytes of one file into an RGB JPEG, or
raises ``ImageRejected`` with a stable reason code; it never lets a Pillow
exception escape and never keeps a file it could not fully decode.

What "normalised" means:

* the format is decided by the content, never by the file name;
* the pixel count is checked from the header before any pixel is decoded;
* the whole first frame is decoded, so truncated and broken files are caught
  here rather than in a training epoch;
* EXIF orientation is applied (the output carries no EXIF, so it is applied
  exactly once); animated GIF/WebP keep their first frame;
* transparency is composited onto ``ImageLimits.background`` (white by
  default), because the model sees RGB only and the serving path
  (``tf.io.decode_image(channels=3)``) would otherwise drop alpha and expose
  whatever colour the transparent pixels happen to store;
* 16-bit and 32-bit grey are scaled to 8 bit, not clipped;
* embedded ICC colour profiles are ignored, as the serving decoder ignores
  them too: training and serving must see the same pixels;
* images are only ever downscaled, so that the short side is
  ``ImageLimits.short_side``, and re-encoded once as JPEG, with full-resolution
  colour (4:4:4): chroma subsampling (Pillow's default 4:2:0) was the largest
  difference left between a prepared image and the raw file serving decodes
  (measured by ``benchmarks/bench_parity.py``; it costs about a third more bytes).

Pillow's global state (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``) is never changed. Pillow's own
decompression-bomb error still applies on top of ``ImageLimits.max_pixels``
(at twice ``Image.MAX_IMAGE_PIXELS``) and is reported as too many pixels.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import os
import stat

from PIL import Image, ImageOps

# Pillow format names accepted as input. MPO is the multi-picture JPEG many
# cameras and phones write; its first picture is an ordinary JPEG.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})
# libjpeg's limit on either side of the output.
JPEG_MAX_SIDE = 65_500
# Pillow's code for 4:4:4: no chroma subsampling in what prepare stores.
JPEG_SUBSAMPLING = 0
# What prepare accepts and stores unless told otherwise. The pixel cap is
# Pillow's own decompression-bomb threshold.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_SHORT_SIDE = 600

# The plugins asked to open a file; the JPEG plugin itself returns MPO files.
_OPENERS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Leading bytes of the allowed formats: a file that starts like one of them
# but that Pillow cannot open is a damaged image, not "not an image".
_ALLOWED_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

# Image formats Pillow cannot open (without plugins) but users do upload;
# naming them turns "not an image" into an actionable message.
_UNSUPPORTED_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
    b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF",
}
_UNSUPPORTED_SIGNATURES = (
    (b"%PDF-", "PDF"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)

# Pillow reports truncation as an OSError whose message says so.
_TRUNCATION_MARKERS = ("truncated", "premature end", "unexpected end")

# Downscaling in two steps (JPEG DCT scaling, then Image.reduce, then
# LANCZOS) keeps at least this factor of headroom above the target size, the
# way Image.thumbnail does; the result is indistinguishable from a direct
# LANCZOS resize and much faster on large photos.
_DRAFT_GAP = 2.0
_REDUCING_GAP = 3.0


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What is accepted and how it is normalised.

    ``background`` is the RGB colour that transparent pixels are composited
    onto (alpha channels, transparent palette entries, tRNS chunks).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    short_side: int = DEFAULT_SHORT_SIDE
    jpeg_quality: int = 95
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "short_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive integer, got {value!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ImageLimits.jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        background = tuple(self.background)
        if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
            raise ValueError(f"ImageLimits.background must be three integers in 0..255, got {self.background!r}")
        object.__setattr__(self, "background", background)


class RejectReason(str, enum.Enum):
    """Machine-readable rejection codes, stable across versions (used in the data report)."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_MODE = "unsupported_mode"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    BAD_DIMENSIONS = "bad_dimensions"  # empty, or too long a side for JPEG even after resizing
    NOT_A_FILE = "not_a_file"  # a FIFO, device, socket or folder where a file was expected


class ImageRejected(Exception):
    """A file that is not kept; ``str(exc)`` is a sentence for humans."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = RejectReason(reason)
        self.detail = detail

    def __reduce__(self):
        # Survives pickling, so prepare may normalise in worker processes.
        return (type(self), (self.reason, self.detail))


@dataclasses.dataclass(frozen=True)
class NormalizedImage:
    jpeg: bytes  # RGB, encoded once as JPEG, no EXIF
    width: int  # after orientation and resize
    height: int
    original_width: int  # as stored in the file, before orientation
    original_height: int
    original_format: str  # Pillow's name for what the content is, e.g. "PNG"
    sha256: str  # hex digest of the original raw bytes


# Bytes read at a time from a local file: the limit itself may be far larger than one image.
_READ_CHUNK = 1024 * 1024


def read_image_file(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one local image file, or ImageRejected before they are read.

    Only a regular file is read (a symlink is followed, and judged by what it
    points to): reading a FIFO waits for a writer forever, a device such as
    /dev/zero never ends, and neither is an image. Its size is judged from
    stat before any byte is read, and at most ``max_bytes`` + 1 bytes are
    read whatever stat said (a file that grows, a filesystem that reports 0),
    so memory stays bounded by the limit. OSError (missing, no permission)
    is left to the caller.
    """
    _check_regular(os.stat(path), path)
    # O_NONBLOCK: if the path was swapped for a FIFO since stat, opening it must not wait for a writer.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        status = os.fstat(descriptor)
        _check_regular(status, path)
        if status.st_size > max_bytes:
            raise _too_large(status.st_size, max_bytes)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = handle.read(min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > max_bytes:
        raise ImageRejected(RejectReason.TOO_LARGE, f"the file holds more than the limit of {max_bytes:,} bytes "
                            f"(it grew while read, or its size was misreported as {status.st_size:,})")
    return b"".join(chunks)


def _check_regular(status: os.stat_result, path: str) -> None:
    if stat.S_ISREG(status.st_mode):
        return
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(status.st_mode)), "not a regular file")
    target = " (through a symbolic link)" if os.path.islink(path) else ""
    raise ImageRejected(RejectReason.NOT_A_FILE, f"it is {kind}{target}, not a regular file: not read")


def _too_large(size: int, max_bytes: int) -> ImageRejected:
    return ImageRejected(RejectReason.TOO_LARGE, f"the file is {size:,} bytes, over the limit of {max_bytes:,} bytes")


def normalize_image(raw: bytes, limits: ImageLimits = ImageLimits()) -> NormalizedImage:
    """Validates one raw file and returns it as a normalised RGB JPEG.

    Raises ImageRejected (and nothing else, short of MemoryError) when the
    file is not kept.
    """
    if not raw:
        raise ImageRejected(RejectReason.EMPTY, "the file is empty (0 bytes)")
    if len(raw) > limits.max_bytes:
        raise _too_large(len(raw), limits.max_bytes)
    sha256 = hashlib.sha256(raw).hexdigest()

    image = _open(raw)
    image_format = image.format or "unknown"
    original_width, original_height = image.size
    _check_size(original_width, original_height, limits)

    if image_format in ("JPEG", "MPO"):
        _request_jpeg_draft(image, limits.short_side)
    _decode(image, image_format)

    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
        rgb = _to_rgb(image, limits.background)
        rgb = _downscale(rgb, limits.short_side)
        jpeg = _encode_jpeg(rgb, limits.jpeg_quality)
    except (ImageRejected, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - any Pillow failure here means a damaged file
        detail = f"the {image_format} image decoded but could not be converted: {_describe(error)}"
        raise ImageRejected(RejectReason.CORRUPT, detail) from error
    return NormalizedImage(jpeg=jpeg, width=rgb.width, height=rgb.height,
                           original_width=original_width, original_height=original_height,
                           original_format=image_format, sha256=sha256)


def _open(raw: bytes) -> Image.Image:
    """Identifies the content and reads its header (no pixel data yet)."""
    failure = None
    try:
        image = Image.open(io.BytesIO(raw), formats=_OPENERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Raised by Pillow's own cap; the Warning is an exception only where
        # warnings are configured as errors.
        raise ImageRejected(RejectReason.TOO_MANY_PIXELS, f"the image has too many pixels: {error}") from error
    except MemoryError:
        raise
    except Image.UnidentifiedImageError:
        image = None
    except Exception as error:  # noqa: BLE001 - a plugin failing on a damaged header
        image, failure = None, error
    if image is not None:
        if image.format not in ALLOWED_FORMATS:  # defensive: a plugin reporting another name
            raise _unsupported(image.format or "unknown")
        return image

    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        # RIFF declares the length of what follows: a shorter file was cut.
        declared = int.from_bytes(raw[4:8], "little") + 8
        if declared > len(raw):
            raise ImageRejected(RejectReason.TRUNCATED,
                                f"the WEBP file is cut short: {len(raw):,} of {declared:,} bytes")
        raise ImageRejected(RejectReason.CORRUPT, "the file starts like a WEBP image but is damaged")
    for signature, name in _ALLOWED_SIGNATURES:
        if raw.startswith(signature) and (name != "BMP" or _plausible_bmp(raw)):
            because = f" ({_describe(failure)})" if failure else ""
            raise ImageRejected(RejectReason.CORRUPT,
                                f"the file starts like a {name} image but its header is damaged "
                                f"or cut short{because}")
    other_format = _sniff_unsupported(raw)
    if other_format:
        raise _unsupported(other_format)
    raise ImageRejected(RejectReason.NOT_AN_IMAGE, f"the content is not an image ({_content_hint(raw)})")


def _plausible_bmp(raw: bytes) -> bool:
    # "BM" alone is too weak (a text file may start with it); a BMP header
    # also stores the file size and has reserved zero bytes.
    return len(raw) >= 14 and raw[6:10] == b"\x00\x00\x00\x00"


def _sniff_unsupported(raw: bytes) -> str | None:
    if raw[4:8] == b"ftyp" and raw[8:12] in _UNSUPPORTED_BRANDS:
        return _UNSUPPORTED_BRANDS[raw[8:12]]
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if raw.startswith(signature):
            return name
    try:
        with Image.open(io.BytesIO(raw)) as other:
            return other.format or "unknown"
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - nothing recognised it: not an image
        return None


def _unsupported(name: str) -> ImageRejected:
    allowed = ", ".join(sorted(ALLOWED_FORMATS - {"MPO"}))
    return ImageRejected(RejectReason.UNSUPPORTED_FORMAT,
                         f"the content is in {name} format, which is not supported (use {allowed})")


def _content_hint(raw: bytes) -> str:
    head = raw[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "it looks like an HTML page, perhaps a download that failed"
    if head.startswith((b"<?xml", b"<svg")):
        return "it looks like XML or SVG, which is not a raster image"
    if head.startswith((b"{", b"[")):
        return "it looks like JSON text"
    return f"unrecognised leading bytes {raw[:8].hex(' ')}"


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    """Judges the header's size before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageRejected(RejectReason.BAD_DIMENSIONS, f"the image header declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageRejected(RejectReason.TOO_MANY_PIXELS,
                            f"the image is {width}x{height} = {width * height:,} pixels, "
                            f"over the limit of {limits.max_pixels:,}")
    output_width, output_height = _output_size(width, height, limits.short_side)
    if max(output_width, output_height) > JPEG_MAX_SIDE:
        raise ImageRejected(RejectReason.BAD_DIMENSIONS,
                            f"the image is {width}x{height}; even resized to {output_width}x{output_height} "
                            f"it exceeds JPEG's limit of {JPEG_MAX_SIDE:,} pixels a side")


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Only ever downscales, so that the short side becomes short_side."""
    if min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def _request_jpeg_draft(image: Image.Image, short_side: int) -> None:
    """Lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays
    well above the target; the whole stream is still read, so truncation is
    still detected."""
    width, height = image.size
    scale = short_side * _DRAFT_GAP / min(width, height)
    if scale < 1:
        image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))


def _decode(image: Image.Image, image_format: str) -> None:
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(RejectReason.TOO_MANY_PIXELS, f"the image has too many pixels: {error}") from error
    except MemoryError:
        raise
    except EOFError as error:
        raise ImageRejected(RejectReason.TRUNCATED,
                            f"the {image_format} data ends early, the file is cut short: {_describe(error)}") from error
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad data
        message = str(error).lower()
        if isinstance(error, OSError) and any(marker in message for marker in _TRUNCATION_MARKERS):
            detail = f"the {image_format} data ends early, the file is cut short: {_describe(error)}"
            raise ImageRejected(RejectReason.TRUNCATED, detail) from error
        raise ImageRejected(RejectReason.CORRUPT,
                            f"the {image_format} pixel data is damaged: {_describe(error)}") from error


# Modes Pillow converts to RGB correctly by itself (LAB, for one, it does not).
_DIRECT_TO_RGB = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"})
_WITH_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _to_8bit_grey(image)
    if image.mode == "LAB":
        return _lab_to_rgb(image)
    if image.mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "RGB":  # most photos: nothing to convert, and no copy
        return image
    if image.mode in _DIRECT_TO_RGB:
        return image.convert("RGB")
    raise ImageRejected(RejectReason.UNSUPPORTED_MODE,
                        f"the image's colour mode {image.mode} cannot be converted to RGB")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                        "LAB", "RGB")
    return ImageCms.applyTransform(image, transform)


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Maps high bit-depth grey to 8 bit by scaling (Pillow's convert('L') clips at 255).

    16-bit data uses its full 0..65535 range. 32-bit integer data already in
    0..255 is kept, in 0..65535 is treated as 16 bit, otherwise stretched
    from its minimum to its maximum; float data in 0..1 is scaled by 255,
    otherwise stretched the same way. A transparent grey level (PNG tRNS) is
    mapped too, so it may also catch neighbouring levels that round alike.
    """
    transparency = image.info.get("transparency")
    if image.mode.startswith("I;16"):
        image, low, high = image.convert("I"), 0.0, 65535.0
    else:
        low, high = image.getextrema()
        if image.mode == "I" and low >= 0 and high <= 255:
            low, high = 0.0, 255.0
        elif image.mode == "I" and low >= 0 and high <= 65535:
            low, high = 0.0, 65535.0
        elif image.mode == "F" and low >= 0 and high <= 1:
            low, high = 0.0, 1.0
    if high <= low:
        grey = Image.new("L", image.size, 0 if low <= 0 else 255)
    else:
        scale = 255.0 / (high - low)
        offset = -low * scale + 0.5  # + 0.5 rounds, as the conversion truncates
        grey = image.point(lambda value: value * scale + offset)
        if grey.mode == "F":
            grey = grey.convert("I")
        grey = grey.convert("L")
        if isinstance(transparency, (int, float)):
            grey.info["transparency"] = min(255, max(0, int(transparency * scale + offset)))
    if not isinstance(grey.info.get("transparency"), int):
        grey.info.pop("transparency", None)
    return grey


def _downscale(image: Image.Image, short_side: int) -> Image.Image:
    size = _output_size(image.width, image.height, short_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
