"""Augmentation: one resampling per image that means what Keras's RandomFlip,
RandomRotation and RandomZoom mean, seeded per batch, new every epoch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kic.config import TrainingConfig
from kic.data import dataset_info, input_pipeline
from kic.data.augmentation import BOTH, HORIZONTAL, Augmentation, factor_range, transform

SIZE = 48


def smooth_image(batch: int = 1) -> tf.Tensor:
    """Slow waves in each channel: resampling twice or once changes little, so layers compare."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    channels = [127 + 100 * np.sin(x / 9 + 1) * np.cos(y / 11), 127 + 90 * np.cos((x + y) / 13),
                127 + 80 * np.sin((x - y) / 10)]
    return tf.constant(np.repeat(np.stack(channels, -1)[None], batch, 0))


def once(images, *, angle=0.0, scale=1.0, horizontal=False, vertical=False) -> np.ndarray:
    count = images.shape[0]
    return transform(images, horizontal=tf.fill([count], horizontal), vertical=tf.fill([count], vertical),
                     angles=tf.fill([count], angle * 2 * np.pi), scales=tf.fill([count], scale)).numpy()


def interior(images: np.ndarray) -> np.ndarray:
    return images[:, 6:-6, 6:-6].astype(np.float32)


@pytest.mark.parametrize("turn", [0.1, -0.15])
def test_a_turn_is_keras_random_rotation_including_its_direction(turn):
    images = smooth_image()
    keras_turned = keras.layers.RandomRotation((turn, turn), fill_mode="reflect")(images, training=True).numpy()
    ours = once(images, angle=turn)
    assert np.abs(interior(ours) - interior(keras_turned)).max() < 1.0  # float16 rounding; the same matrix
    assert np.abs(interior(ours) - interior(once(images, angle=-turn))).max() > 20  # the sign matters


@pytest.mark.parametrize("zoom", [0.2, -0.3])
def test_a_zoom_is_keras_random_zoom(zoom):
    images = smooth_image()
    keras_zoomed = keras.layers.RandomZoom((zoom, zoom), fill_mode="reflect")(images, training=True).numpy()
    ours = once(images, scale=1 + zoom)
    assert np.abs(interior(ours) - interior(keras_zoomed)).max() < 1.0


def test_flip_turn_and_zoom_compose_as_keras_layers_in_that_order():
    images = smooth_image()
    flipped = np.flip(images.numpy(), axis=2)
    keras_result = keras.layers.RandomZoom((-0.2, -0.2), fill_mode="reflect")(
        keras.layers.RandomRotation((0.05, 0.05), fill_mode="reflect")(flipped, training=True), training=True)
    ours = once(images, angle=0.05, scale=0.8, horizontal=True)
    # Keras interpolates twice, kic once: on slow waves they agree to a few levels.
    assert np.abs(interior(ours) - interior(keras_result.numpy())).max() < 4.0


def outcomes(augmentation: Augmentation, images: np.ndarray) -> set[str]:
    flips = {"none": images, "horizontal": images[:, ::-1], "vertical": images[::-1], "both": images[::-1, ::-1]}
    batch = augmentation(tf.constant(np.repeat(images[None], 64, 0)), tf.constant([3, 4], tf.int64)).numpy()
    seen = set()
    for image in batch:
        matches = [name for name, flipped in flips.items() if np.array_equal(image, flipped.astype(np.float16))]
        assert len(matches) == 1, "a flip must map pixels onto pixels exactly"
        seen.add(matches[0])
    return seen


def test_flips_are_exact_and_each_way_is_drawn_on_its_own():
    images = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    # As the reference's Keras 2 did (Keras 3 flips both ways or neither): four outcomes.
    assert outcomes(Augmentation(flip=BOTH), images) == {"none", "horizontal", "vertical", "both"}
    assert outcomes(Augmentation(flip=HORIZONTAL), images) == {"none", "horizontal"}


def test_a_negative_rotation_turns_clockwise_only():
    """The table's negative factors are one way: a spot right of the centre goes down (clockwise on screen)."""
    image = np.zeros((1, SIZE, SIZE, 3), np.float32)
    image[0, SIZE // 2 - 1:SIZE // 2 + 1, SIZE - 8:SIZE - 4] = 255
    batch = np.repeat(image, 32, 0)
    for factor, below in ((-0.2, True), (0.2, None)):
        turned = Augmentation(rotation=factor)(tf.constant(batch), tf.constant([1, 2], tf.int64)).numpy()
        rows = [np.argwhere(spot[..., 0] > 100)[:, 0].mean() for spot in turned]
        if below:
            assert min(rows) >= SIZE / 2 - 1.5
        else:  # both ways
            assert min(rows) < SIZE / 2 - 4 < SIZE / 2 + 4 < max(rows)
    assert factor_range(-0.3) == (-0.3, 0.0) and factor_range(0.2) == (-0.2, 0.2)


def test_the_ends_of_the_ranges_give_finite_images():
    """Zoom -1 (both ends of the table's range reach it) fills the image with its centre pixel."""
    images = smooth_image(4)
    for augmentation in (Augmentation(flip=BOTH, rotation=1.0, zoom=1.0), Augmentation(rotation=-1.0, zoom=-1.0)):
        result = augmentation(images, tf.constant([5, 6], tf.int64)).numpy()
        assert np.isfinite(result).all() and result.min() >= 0 and result.max() <= 255
    center = once(images, scale=0.0)
    assert np.ptp(center[0], axis=(0, 1)).max() == 0


def test_augmented_training_input_repeats_with_its_seed_and_changes_every_epoch(prepared):
    data = dataset_info.load(prepared)
    augmentation = Augmentation.from_config(TrainingConfig(augmentation=True))

    def epochs(seed: int, count: int = 2) -> list[np.ndarray]:
        dataset = input_pipeline.make_dataset(data.shard_paths(prepared, "train"), input_pipeline.InputOptions(
            input_pipeline.Images(image_size=32, interpolation="bilinear", num_classes=data.num_classes,
                                  binary_mode=False, num_examples=data.splits["train"].num_examples),
            input_pipeline.Reading(batch_size=64), input_pipeline.Training(seed=seed, augmentation=augmentation)))
        return [np.concatenate([pixels.numpy() for pixels, _ in dataset]) for _ in range(count)]

    def contents(images: np.ndarray) -> np.ndarray:  # the images as a set, whatever their order
        return np.sort(images.sum(axis=(1, 2, 3), dtype=np.float64))

    first, second = epochs(seed=1)
    assert first.dtype == np.float16 and first.shape[1:] == (32, 32, 3)  # the model casts to float32
    assert not np.allclose(contents(first), contents(second))  # new draws, not only a new order
    again = epochs(seed=1, count=1)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, epochs(seed=2, count=1)[0])
    assert Augmentation.from_config(TrainingConfig(augmentation=False)) is None
