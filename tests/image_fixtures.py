"""Generates test images in memory: good files in every supported format and
colour mode, and the kinds of bad file a real upload folder contains.

Nothing here is committed as a binary; every fixture is built from code and is
the same on every run. ``fixture_matrix()`` is the catalogue other tests use
to build folder-per-class datasets with a mix of good and bad files.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
             b"<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n")


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def solid_jpeg(color=RED, size=(64, 48), quality: int = 95) -> bytes:
    # 4:4:4 so that colours survive exactly enough for tight assertions.
    return encode(Image.new("RGB", size, color), "JPEG", quality=quality, subsampling=0)


def solid_png(color=RED, size=(64, 48), mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size, color), "PNG")


def noise_image(size=(160, 120), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Incompressible content, so that most of an encoded file is pixel data
    (cutting such a file at half cuts the pixels, not the header)."""
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = random.Random(seed).randbytes(size[0] * size[1] * bands)
    return Image.frombytes(mode, size, data)


def noise_jpeg(size=(160, 120), seed: int = 0) -> bytes:
    return encode(noise_image(size, seed=seed), "JPEG", quality=90)


def two_colour_image(size, left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: survives any resize."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def cmyk_jpeg(cmyk=(0, 255, 255, 0), size=(64, 48)) -> bytes:
    """Defaults to pure red in CMYK."""
    return encode(Image.new("CMYK", size, cmyk), "JPEG", quality=95)


def grey16_png(value: int = 32768, size=(32, 24)) -> bytes:
    return encode(Image.new("I;16", size, value), "PNG")


def grey16_ramp_png() -> bytes:
    """A 3x1 16-bit image: black, mid grey, white."""
    image = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        image.putpixel((x, 0), value)
    return encode(image, "PNG")


def palette_png(size=(40, 30), transparent_left: bool = False) -> bytes:
    """Palette image: index 0 red (left half), index 1 blue (right half).
    With transparent_left, index 0 is the transparent entry."""
    image = Image.new("P", size, 1)
    image.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, size[0] // 2, size[1]))
    options = {"transparency": 0} if transparent_left else {}
    return encode(image, "PNG", **options)


def rgba_png(size=(40, 30)) -> bytes:
    """Left half fully transparent (stored colour black), right half opaque
    blue, and pixel (size[0]-1, 0) half-transparent red."""
    image = Image.new("RGBA", size, (*BLUE, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    image.putpixel((size[0] - 1, 0), (*RED, 128))
    return encode(image, "PNG")


def grey_alpha_png(size=(40, 30)) -> bytes:
    """Mode LA: black, alpha 0 everywhere but the right half (opaque black)."""
    image = Image.new("LA", size, (0, 0))
    image.paste((0, 255), (size[0] // 2, 0, size[0], size[1]))
    return encode(image, "PNG")


def one_bit_png(size=(40, 30)) -> bytes:
    """Mode 1: left half black, right half white."""
    image = Image.new("1", size, 1)
    image.paste(0, (0, 0, size[0] // 2, size[1]))
    return encode(image, "PNG")


def animated_gif(colors=(RED, GREEN, BLUE), size=(40, 30)) -> bytes:
    frames = [Image.new("RGB", size, color) for color in colors]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def gif_blocks(raw: bytes) -> list[bytes]:
    """A GIF's header (with its global colour table) and then each block as bytes, the trailer left out:
    an extension (0x21) or an image (0x2C) with its sub-blocks. A plain reading of the format, for fixtures."""
    flags = raw[10]
    position = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = [raw[:position]]
    while raw[position] in (0x21, 0x2C):
        start = position
        if raw[position] == 0x21:
            position += 2
        else:
            local = raw[position + 9]
            position += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        while raw[position]:
            position += 1 + raw[position]
        position += 1
        blocks.append(raw[start:position])
    return blocks


def gif_frame_bomb(frames: int, size=(1000, 1000)) -> bytes:
    """A GIF of ``frames`` images, each within any pixel limit, in a few kilobytes a frame: Pillow's
    two-frame GIF with its second frame (and the extension before it) repeated."""
    two = encode(Image.new("P", size, 0), "GIF", save_all=True, append_images=[Image.new("P", size, 1)],
                 duration=10)
    blocks = gif_blocks(two)
    first, second = (index for index, block in enumerate(blocks) if block[0] == 0x2C)
    return b"".join(blocks[:first + 1]) + b"".join(blocks[first + 1:second + 1]) * (frames - 1) + b";"


def animated_webp(colors=(RED, GREEN), size=(40, 30)) -> bytes:
    frames = [Image.new("RGB", size, color) for color in colors]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


def mpo_jpeg(size=(64, 48)) -> bytes:
    """Multi-picture JPEG as phones write it: the first picture is green."""
    first, second = Image.new("RGB", size, GREEN), Image.new("RGB", size, BLUE)
    return encode(first, "MPO", save_all=True, append_images=[second], quality=95, subsampling=0)


def exif_block(orientation: int, byte_order: str = "II") -> bytes:
    """An EXIF payload ("Exif\\0\\0", then a TIFF structure: "II" little-endian
    or "MM" big-endian) whose IFD0 holds just the Orientation tag, as Pillow
    writes it into a file."""
    exif = Image.Exif()
    exif.endian = {"II": "<", "MM": ">"}[byte_order]
    exif[0x0112] = orientation
    return exif.tobytes()


def exif_rotated_jpeg(orientation: int = 6, size=(40, 24), byte_order: str = "II") -> bytes:
    """White image with an 8x8 red marker in the stored top-left corner and
    EXIF orientation set; orientation 6 displays it rotated 90 degrees
    clockwise, moving the marker to the top-right corner."""
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (0, 0, 8, 8))
    return encode(image, "JPEG", quality=95, subsampling=0, exif=exif_block(orientation, byte_order))


def jpeg_with_app1(payload: bytes, raw: bytes | None = None) -> bytes:
    """``raw`` (a JPEG) with an APP1 segment holding ``payload`` right after SOI."""
    raw = raw if raw is not None else solid_jpeg()
    return raw[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + raw[2:]


def truncated(raw: bytes, fraction: float = 0.5) -> bytes:
    return raw[: int(len(raw) * fraction)]


def jpeg_with_zeroed_huffman_tables(raw: bytes | None = None) -> bytes:
    """Zeroes the body of every DHT segment: libjpeg then reports a bogus
    Huffman table. (Zeroing entropy-coded data instead is NOT reliably
    detected: libjpeg decodes zeros as valid, if wrong, pixels.)"""
    data = bytearray(raw if raw is not None else noise_jpeg())
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker == 0xC4:
            data[position + 4:position + 2 + length] = bytes(length - 2)
        if marker == 0xDA:  # start of scan: no more headers
            break
        position += 2 + length
    return bytes(data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels; its pixel
    data is a few bytes, so decoding it would fail (or allocate width*height*4
    bytes first): only a header check can reject it cheaply."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def fake_heic() -> bytes:
    """The leading box of an iPhone HEIC photo (enough to identify it)."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + bytes(64)


def fixture_matrix() -> dict[str, tuple[bytes, str | None]]:
    """File name -> (raw bytes, expected RejectReason value, or None if kept).

    Names carry the extension a user would have given the file, which is
    deliberately misleading for some (content decides, not the name). All
    images are small, so a dataset built from this stays fast.
    """
    noise = noise_jpeg()
    return {
        "red.jpg": (solid_jpeg(RED), None),
        "green.png": (solid_png(GREEN), None),
        "cmyk.jpg": (cmyk_jpeg(), None),
        "grey.png": (solid_png(128, mode="L"), None),
        "grey16.png": (grey16_png(), None),
        "palette.png": (palette_png(), None),
        "palette_transparent.png": (palette_png(transparent_left=True), None),
        "rgba.png": (rgba_png(), None),
        "grey_alpha.png": (grey_alpha_png(), None),
        "one_bit.png": (one_bit_png(), None),
        "animated.gif": (animated_gif(), None),
        "photo.webp": (encode(Image.new("RGB", (40, 30), BLUE), "WEBP", lossless=True), None),
        "animated.webp": (animated_webp(), None),
        "photo.bmp": (encode(Image.new("RGB", (40, 30), GREEN), "BMP"), None),
        "photo.tiff": (encode(Image.new("RGB", (40, 30), RED), "TIFF", compression="tiff_lzw"), None),
        "png_named_as.jpg": (solid_png(BLUE), None),
        "exif_rotated.jpg": (exif_rotated_jpeg(), None),
        "camera_mpo.jpg": (mpo_jpeg(), None),
        "noise.jpg": (noise, None),
        "truncated.jpg": (truncated(noise), "truncated"),
        "zeroed_tables.jpg": (jpeg_with_zeroed_huffman_tables(noise), "corrupt"),
        "damaged_header.png": (solid_png(RED)[:20], "corrupt"),
        "empty.jpg": (b"", "empty"),
        "error_page.jpg": (HTML_PAGE, "not_an_image"),
        "notes.txt.png": (b"BMW and other notes, not a bitmap\n", "not_an_image"),
        "dimension_bomb.png": (png_header_only(30000, 30000), "too_many_pixels"),
        "favicon.ico": (encode(Image.new("RGB", (32, 32), RED), "ICO"), "unsupported_format"),
        "iphone.jpg": (fake_heic(), "unsupported_format"),
    }


# --- Photo-like files of every kind serving meets, for training/serving parity --------------

SHAPE_HUES = {"circle": 0.02, "square": 0.33, "triangle": 0.62}  # as kic.demo_data draws its classes


def shape_photo(shape: str, size=(640, 480), seed: int | tuple[int, ...] = 0) -> Image.Image:
    """A photo-like picture of one demo class: a smooth two-colour background
    with sensor-like noise and the class's shape in the class's hue, at any
    size, so that it downscales like a photo (not like flat colour)."""
    import colorsys

    import numpy as np
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    corners = rng.uniform(90, 200, size=(2, 3)).astype(np.float32)
    background = corners[0] * (1 - x * 0.5 - y * 0.5) + corners[1] * (x * 0.5 + y * 0.5)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    extent = int(min(size) * rng.uniform(0.35, 0.7))
    left = int(rng.integers(0, width - extent))
    top = int(rng.integers(0, height - extent))
    hue = (SHAPE_HUES[shape] + rng.uniform(-0.06, 0.06)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
    box = (left, top, left + extent, top + extent)
    outline = max(2, extent // 40)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=outline)
    elif shape == "square":
        draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=outline)
    else:
        draw.polygon([(left + extent // 2, top), (left, top + extent), (left + extent, top + extent)],
                     fill=colour, outline=(0, 0, 0), width=outline)
    noise = rng.integers(-10, 11, size=(height, width, 3), dtype=np.int16)  # sensor noise
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8), "RGB")


def _transparent_border(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    alpha.paste(255, (image.width // 10, image.height // 10, image.width * 9 // 10, image.height * 9 // 10))
    rgba.putalpha(alpha)
    return rgba


def _sideways(image: Image.Image, byte_order: str) -> bytes:
    """Stored turned a quarter left, with orientation 6 saying to turn it back (a phone held upright)."""
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90,
                  exif=exif_block(6, byte_order))


# kind (as kic.serving.parity.file_kind names it) -> (file extension, size, encoder)
PARITY_KINDS = {
    "JPEG": (".jpg", (640, 480), lambda image: encode(image, "JPEG", quality=90)),
    "JPEG small": (".jpg", (200, 150), lambda image: encode(image, "JPEG", quality=85)),
    "JPEG > 3000 px": (".jpg", (4032, 3024), lambda image: encode(image, "JPEG", quality=90)),
    "JPEG EXIF-rotated": (".jpg", (1600, 1200), lambda image: _sideways(image, "II")),
    "JPEG EXIF-rotated (MM)": (".jpg", (1600, 1200), lambda image: _sideways(image, "MM")),
    "JPEG CMYK": (".jpg", (800, 600), lambda image: encode(image.convert("CMYK"), "JPEG", quality=90)),
    "JPEG grey": (".jpg", (800, 600), lambda image: encode(image.convert("L"), "JPEG", quality=90)),
    "PNG": (".png", (640, 480), lambda image: encode(image, "PNG")),
    "PNG grey": (".png", (640, 480), lambda image: encode(image.convert("L"), "PNG")),
    "PNG palette": (".png", (640, 480), lambda image: encode(image.quantize(64), "PNG")),
    "PNG alpha": (".png", (640, 480), lambda image: encode(_transparent_border(image), "PNG")),
    "PNG palette alpha": (".png", (640, 480),
                          lambda image: encode(_transparent_border(image).quantize(64), "PNG")),
    "WEBP": (".webp", (640, 480), lambda image: encode(image, "WEBP", quality=85)),
}


def write_parity_files(root: str, classes=tuple(SHAPE_HUES), per_kind: int = 1, kinds=None,
                       seed: int = 0) -> dict[str, str]:
    """Writes ``root/<class>/<kind>_<n><ext>`` for every kind and class; returns file name -> kind."""
    import os

    written = {}
    for class_index, shape in enumerate(classes):
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for kind_index, kind in enumerate(kinds or PARITY_KINDS):
            extension, size, encoder = PARITY_KINDS[kind]
            for n in range(per_kind):
                image = shape_photo(shape, size, seed=(seed, class_index, kind_index, n))
                name = f"{shape}/{kind.replace(' ', '_').replace('>', 'gt')}_{n}{extension}"
                with open(os.path.join(root, name), "wb") as handle:
                    handle.write(encoder(image))
                written[name] = kind
    return written


def malformed_corpus(seed: int = 20, per_seed: int = 30) -> list[tuple[str, bytes]]:
    """(name, bytes): a small good file of each kind (animated WebP and GIF
    included) and ``per_seed`` seeded mutations of each (cut short, bits
    flipped, header bytes overwritten, runs replaced), then random bytes: the
    fuzz corpus of tests/test_fuzz.py and tests/test_untrusted_files.py."""
    rng = random.Random(seed)
    noise, rgba = noise_image((32, 24), seed=1), noise_image((32, 24), mode="RGBA", seed=2)
    frames = [Image.new("RGB", (24, 16), color) for color in (RED, GREEN, BLUE)]
    seeds = {
        "jpeg": encode(noise, "JPEG", quality=85),
        "png": encode(rgba, "PNG"),
        "webp": encode(noise, "WEBP", quality=80),
        "webp_alpha": encode(rgba, "WEBP", quality=80),
        "webp_lossless": encode(rgba, "WEBP", lossless=True),
        "webp_animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "webp_animated_lossless": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50,
                                         lossless=True),
        "gif": encode(noise.convert("P"), "GIF"),
        "gif_animated": animated_gif(size=(24, 16)),
        "bmp": encode(noise, "BMP"),
    }
    cases = []
    for name, raw in seeds.items():
        cases.append((name, raw))
        cases.extend((f"{name}-{index}", _mutate(raw, rng)) for index in range(per_seed))
    cases.extend((f"random-{index}", rng.randbytes(rng.randrange(64))) for index in range(10))
    return cases


MALFORMED_SEEDS = ("jpeg", "png", "webp", "webp_alpha", "webp_lossless", "webp_animated", "webp_animated_lossless",
                   "gif", "gif_animated", "bmp")


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.randrange(5)
    if kind == 0:  # cut short
        return bytes(data[:rng.randrange(len(data))])
    if kind == 1:  # a few bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 2:  # the header, where sizes, flags and chunk lengths live
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    elif kind == 3:  # a run of bytes replaced by random ones
        start = rng.randrange(len(data))
        data[start:start + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
    else:  # a flip and a cut
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data = data[:rng.randint(len(data) // 2, len(data))]
    return bytes(data)
