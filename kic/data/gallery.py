"""Thumbnails for the data report: a few images of each class, and the
rejected files that still decode, small enough to sit inline in the HTML
page (96 px JPEGs of a few kilobytes, as data: URIs)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

from PIL import Image, ImageOps

from kic.data.report import Gallery, Thumbnail

SIZE = 96  # pixels, the longer side
QUALITY = 75
PER_CLASS = 6
MAX_CLASSES = 100  # beyond that the page would weigh megabytes; the JSON report lists every class
MAX_REJECTED = 24
# Rejected for what the pixels are, not for being unreadable: these may still decode.
DECODABLE_REASONS = frozenset({"too_many_pixels", "bad_dimensions", "truncated", "corrupt", "unsupported_mode",
                               "internal_error"})
MAX_SOURCE_PIXELS = 100_000_000  # larger non-JPEGs (no reduced decode) are left out: too costly to show
_MAX_ATTEMPTS = 4 * MAX_REJECTED


def thumbnail(raw: bytes) -> bytes | None:
    """A JPEG of at most SIZE x SIZE pixels, upright, alpha on white; None
    when the file does not decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning: the size is checked here
            image = Image.open(io.BytesIO(raw))
            image.draft("RGB", (SIZE, SIZE))  # JPEG: decode at a fraction of the size
            if image.width * image.height > MAX_SOURCE_PIXELS:
                return None
            image = ImageOps.exif_transpose(image)
            image.thumbnail((SIZE, SIZE))
            if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=QUALITY)
            return buffer.getvalue()
    except Exception:  # noqa: BLE001 - a file that does not decode simply has no thumbnail
        return None


Reader = Callable[[], bytes]


def build(per_class: Mapping[str, Sequence[tuple[str, Reader]]],
          rejected: Iterable[tuple[str, str, Reader]]) -> Gallery:
    """``per_class``: class name -> (file name, a function that reads the
    image) of the images to show; ``rejected``: (file name, reject reason,
    reader) in report order. The first PER_CLASS images of the first
    MAX_CLASSES classes and the first MAX_REJECTED rejected files that decode
    are shown; only those are read."""
    classes = {}
    for name in list(per_class)[:MAX_CLASSES]:
        shown = [Thumbnail(file, jpeg) for file, read in per_class[name][:PER_CLASS]
                 if (jpeg := thumbnail(read())) is not None]
        classes[name] = tuple(shown)
    shown_rejected: list[Thumbnail] = []
    attempts = 0
    for file, reason, read in rejected:
        if len(shown_rejected) >= MAX_REJECTED or attempts >= _MAX_ATTEMPTS:
            break
        if reason not in DECODABLE_REASONS:
            continue
        attempts += 1
        try:
            raw = read()
        except Exception:  # noqa: BLE001 - unreadable now: nothing to show
            continue
        if (jpeg := thumbnail(raw)) is not None:
            shown_rejected.append(Thumbnail(file, jpeg, note=reason))
    return Gallery(per_class=classes, rejected=tuple(shown_rejected),
                   classes_left_out=max(0, len(per_class) - MAX_CLASSES))
