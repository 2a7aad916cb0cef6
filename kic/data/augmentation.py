"""The reference's three augmentations (flip, rotation, zoom) as one
geometric transform of each image.

Keras's RandomFlip, RandomRotation and RandomZoom each resample the whole
batch in float32: three passes over memory, two bilinear interpolations, and
on 2 cores about 180 images a second at 224 px, slower than decoding. The
same draws composed into one matrix per image cost a single resampling:
faster, and a little sharper, as the image is interpolated once instead of
twice.

Where it runs: the draws (a few numbers an image) always in the input
pipeline, from a stateless key per batch, so that they stay a function of
(seed, epoch, batch); the resampling either there too (``__call__``,
``host_warp``), or, given the draws (``draw``), inside the compiled train
step on the accelerator (``warp``; kic.training.augmented), which takes its
~0.5-2 ms of CPU an image off the host that feeds a GPU.

What each hyperparameter means stays Keras's: the same matrices (rotation and
zoom about the image centre, the rotation's sign, zoom by ``1 + z``), the
same bilinear interpolation and reflected border. One difference, on
purpose: ``horizontal_and_vertical`` flips each way independently (four
outcomes), as the reference's Keras 2 did; Keras 3 flips both ways or neither.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from kic.config import TrainingConfig

HORIZONTAL, VERTICAL, BOTH, NO_FLIP = "horizontal", "vertical", "horizontal_and_vertical", "None"


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random flip, rotation and zoom, drawn per image.

    A rotation or zoom factor ``f`` means what the reference's table says:

    * ``f > 0``: the symmetric range [-f, f], Keras's reading of a single
      number, which the reference passes through (so its users' default 0.2
      turns both ways);
    * ``f < 0``: one way only, the range [f, 0]: the table gives negative
      values as "clockwise" and "zoom in". The reference's Keras 2 refused a
      negative rotation and read a negative zoom as [f, -f]; Keras 3 drops the
      sign; neither says what the table says.
    * ``f = 0`` switches the transform off.

    A rotation of ``r`` turns by ``r`` full turns (0.25: 90 degrees),
    counter-clockwise when positive. Zoom samples the image at ``1 + z`` times
    the distance from its centre: ``z > 0`` zooms out, ``z < 0`` in, and the
    table's ends (1 and -1) both reach z = -1, where the centre pixel fills
    the image.
    """

    flip: str = NO_FLIP
    rotation: float = 0.0
    zoom: float = 0.0

    @classmethod
    def from_config(cls, config: TrainingConfig) -> Augmentation | None:
        if not config.augmentation:
            return None
        return cls(flip=config.augmentation_random_flip, rotation=config.augmentation_random_rotation,
                   zoom=config.augmentation_random_zoom)

    @property
    def changes_anything(self) -> bool:
        return self.flip != NO_FLIP or bool(self.rotation) or bool(self.zoom)

    def __call__(self, images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """Augments a batch [batch, height, width, channels] of pixel levels
        (any real or integer type); returns float16. ``key``, a stateless
        random seed (two integers), decides every draw: the same key gives the
        same batch."""
        shape = tf.shape(images)
        return host_warp(images, self.draw(shape[0], key, height=shape[1], width=shape[2]), exact=self.exact)

    @property
    def exact(self) -> bool:
        """Whether it maps pixels onto pixels (a flip alone): nearest is then exact, and cheaper."""
        return not (self.rotation or self.zoom)

    def draw(self, count: tf.Tensor, key: tf.Tensor, *, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """The transforms [count, 8] of a batch's images (see ``matrices``), every draw decided by ``key``:
        what ``__call__`` applies, and what the input hands a train step that warps on the accelerator."""
        flip_key, turn_key, zoom_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        horizontal, vertical = tf.unstack(tf.random.stateless_uniform([2, count], flip_key) < 0.5)
        if self.flip not in (HORIZONTAL, BOTH):
            horizontal = tf.zeros_like(horizontal)
        if self.flip not in (VERTICAL, BOTH):
            vertical = tf.zeros_like(vertical)
        turns = tf.random.stateless_uniform([count], turn_key, *factor_range(self.rotation))
        lower, upper = factor_range(self.zoom)
        scales = tf.random.stateless_uniform([count], zoom_key, 1.0 + lower, 1.0 + upper)
        return matrices(horizontal=horizontal, vertical=vertical, angles=turns * 2.0 * math.pi, scales=scales,
                        height=height, width=width)


def factor_range(factor: float) -> tuple[float, float]:
    """The (lower, upper) range of a reference rotation or zoom factor (see Augmentation)."""
    return (-factor, factor) if factor > 0 else (factor, 0.0)


def transform(images: tf.Tensor, *, horizontal: tf.Tensor, vertical: tf.Tensor, angles: tf.Tensor,
              scales: tf.Tensor, interpolation: str = "BILINEAR") -> tf.Tensor:
    """Each image flipped (booleans), then turned by its angle (radians,
    counter-clockwise) and zoomed by its scale, about the centre, as Keras's
    RandomFlip, RandomRotation and RandomZoom in that order would; one
    resampling, reflected at the border. Returns float16."""
    shape = tf.shape(images)
    transforms = matrices(horizontal=horizontal, vertical=vertical, angles=angles, scales=scales,
                          height=shape[1], width=shape[2])
    return host_warp(images, transforms, exact=interpolation == "NEAREST")


def matrices(*, horizontal: tf.Tensor, vertical: tf.Tensor, angles: tf.Tensor, scales: tf.Tensor,
             height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Per image, the 8 numbers of ImageProjectiveTransformV3's transform: output pixel (x, y) reads the
    input at (a0 x + a1 y + a2, b0 x + b1 y + b2) (the last two, a projective divisor's, are 0)."""
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    center_x, center_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Each output pixel p reads the input at c + F R Z (p - c): zoom, then the
    # turn, then the flip, applied to where the output pixel comes from.
    flip_x = tf.where(horizontal, -1.0, 1.0)
    flip_y = tf.where(vertical, -1.0, 1.0)
    cos, sin = tf.cos(angles) * scales, tf.sin(angles) * scales
    a0, a1 = flip_x * cos, -flip_x * sin
    b0, b1 = flip_y * sin, flip_y * cos
    a2 = center_x - a0 * center_x - a1 * center_y
    b2 = center_y - b0 * center_x - b1 * center_y
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def host_warp(images: tf.Tensor, transforms: tf.Tensor, *, exact: bool = False) -> tf.Tensor:
    """``warp`` where the input pipeline runs it (the host's CPU), in float16 (exact for pixel levels, half
    the bytes of float32). Compiled by XLA: 0.5 ms of CPU an image at 224 px where TensorFlow's own kernel
    (ImageProjectiveTransformV3, the same sampling) takes 2.0 (measured on 2 cores)."""
    return (_exact_host_warp if exact else _bilinear_host_warp)(images, transforms)


@tf.function(jit_compile=True)
def _bilinear_host_warp(images, transforms):
    return tf.cast(warp(images, transforms), tf.float16)


@tf.function(jit_compile=True)
def _exact_host_warp(images, transforms):
    return tf.cast(warp(images, transforms, exact=True), tf.float16)


def warp(images: tf.Tensor, transforms: tf.Tensor, *, exact: bool = False) -> tf.Tensor:
    """Each image resampled where its transform (``matrices``) says, as
    TensorFlow's ImageProjectiveTransformV3 does it (the same sampling
    points, reflection at the border, bilinear weights; nearest where
    ``exact``), but from gathers and arithmetic, which XLA compiles for any
    device: that kernel has no XLA form, so it could not run inside a
    compiled train step on an accelerator. Returns float32."""
    shape = tf.shape(images)
    count, height, width = shape[0], shape[1], shape[2]
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None]
    columns = tf.cast(tf.range(width), tf.float32)[None, None, :]
    a0, a1, a2, b0, b1, b2 = (transforms[:, index, None, None] for index in range(6))
    x = _reflected(a0 * columns + a1 * rows + a2, width)
    y = _reflected(b0 * columns + b1 * rows + b2, height)
    # One flat gather per corner: the index of pixel (image, row, column) in images seen as [pixels, channels].
    flat = tf.reshape(images, [-1, shape[3]])
    base = (tf.range(count) * height * width)[:, None, None]

    def at(row: tf.Tensor, column: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(flat, base + row * width + column), tf.float32)

    if exact:
        # Half away from zero, as the kernel rounds (coordinates are never negative here).
        return at(tf.cast(tf.floor(y + 0.5), tf.int32), tf.cast(tf.floor(x + 0.5), tf.int32))
    x0, y0 = tf.floor(x), tf.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    column0, row0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    # At the last row or column the far neighbour's weight is 0: clamped, it is read but counts for nothing.
    column1, row1 = tf.minimum(column0 + 1, width - 1), tf.minimum(row0 + 1, height - 1)
    top = at(row0, column0) * (1.0 - wx) + at(row0, column1) * wx
    bottom = at(row1, column0) * (1.0 - wx) + at(row1, column1) * wx
    return top * (1.0 - wy) + bottom * wy


def _reflected(coordinate: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """ImageProjectiveTransformV3's REFLECT fill (d c b a | a b c d | d c b a), then its clamp into the image."""
    length = tf.cast(length, tf.float32)
    folded = tf.math.floormod(coordinate, 2.0 * length)
    folded = tf.where(folded >= length, 2.0 * length - 1.0 - folded, folded)
    return tf.clip_by_value(folded, 0.0, length - 1.0)
