"""The built-in dataset of ``kic run``: generated, deterministic, no network.

Three classes of drawn shapes (circles, squares, triangles) at random sizes
and positions on noisy backgrounds, written as a folder-per-class directory of
PNG files, the same layout users bring. Each class also has its own range of
hues (warm circles, green squares, blue triangles, with random variation), so
a small backbone trained from scratch on CPU learns it in a few epochs.
"""

from __future__ import annotations

import colorsys
import io
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
HUE_CENTRES = {"circle": 0.02, "square": 0.33, "triangle": 0.62}  # fractions of the colour wheel
DEFAULT_IMAGES_PER_CLASS = 100
DEFAULT_SIZE = 96


def _draw(shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    background = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) // 4 + rng.integers(120, 190)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size * 2 // 3))
    left = int(rng.integers(2, size - extent - 2))
    top = int(rng.integers(2, size - extent - 2))
    hue = (HUE_CENTRES[shape] + rng.uniform(-0.07, 0.07)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)))
    box = (left, top, left + extent, top + extent)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=2)
    elif shape == "square":
        draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
    else:
        points = [(left + extent // 2, top), (left, top + extent), (left + extent, top + extent)]
        draw.polygon(points, fill=colour, outline=(0, 0, 0), width=2)
    return image


def write_demo_dataset(root: str, *, images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
                       size: int = DEFAULT_SIZE, seed: int = 0) -> str:
    """Writes ``root/<class>/<class>_<n>.png`` and returns ``root``. The same
    arguments always give byte-identical files."""
    for class_index, shape in enumerate(CLASSES):
        rng = np.random.default_rng([seed, class_index])
        folder = os.path.join(root, shape)
        os.makedirs(folder, exist_ok=True)
        for n in range(images_per_class):
            buffer = io.BytesIO()
            _draw(shape, rng, size).save(buffer, format="PNG")
            with open(os.path.join(folder, f"{shape}_{n:04d}.png"), "wb") as handle:
                handle.write(buffer.getvalue())
    return root
