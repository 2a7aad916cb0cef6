"""tf.data input for training and evaluation, read from prepare's TFRecords.

Records are read with parallel interleave, decoded and resized in parallel
with the shared preprocessing function, cached when they fit in memory, and
augmented (training only) after the cache so every epoch sees new variants.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from kic.config import TrainingConfig
from kic.data import schema
from kic.errors import DataError
from kic.model import preprocessing

# Decoded, resized float32 images are cached in memory below this size.
CACHE_BUDGET_BYTES = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The three reference transforms, each given to its own layer by keyword.

    Keras reads a single factor as the symmetric range [-|f|, +|f|], which is
    what the reference algorithm passes through; 0 switches a transform off.
    """

    flip: str = "None"
    rotation: float = 0.0
    zoom: float = 0.0

    @classmethod
    def from_config(cls, config: TrainingConfig) -> Augmentation | None:
        if not config.augmentation:
            return None
        return cls(flip=config.augmentation_random_flip, rotation=config.augmentation_random_rotation,
                   zoom=config.augmentation_random_zoom)

    def layers(self, seed: int) -> list[keras.layers.Layer]:
        layers: list[keras.layers.Layer] = []
        if self.flip != "None":
            layers.append(keras.layers.RandomFlip(mode=self.flip, seed=seed, name="random_flip"))
        if self.rotation:
            magnitude = abs(self.rotation)
            layers.append(keras.layers.RandomRotation(factor=(-magnitude, magnitude), fill_mode="reflect",
                                                      seed=seed + 1, name="random_rotation"))
        if self.zoom:
            magnitude = abs(self.zoom)
            layers.append(keras.layers.RandomZoom(height_factor=(-magnitude, magnitude), fill_mode="reflect",
                                                  seed=seed + 2, name="random_zoom"))
        return layers


def make_dataset(shard_paths: list[str], *, image_size: int, interpolation: str, batch_size: int,
                 num_classes: int, binary_mode: bool, training: bool, num_examples: int,
                 augmentation: Augmentation | None = None, seed: int = 0,
                 with_source: bool = False, decoded: tf.Variable | None = None,
                 short_side: int = 0) -> tf.data.Dataset:
    """Batches of (pixels float32 [0,255], target); targets are one-hot for
    multi-class and a float 0/1 column in binary mode. With ``with_source`` the
    elements are (pixels, label index, source URI) for evaluation reports.

    ``decoded``, an int64 variable, counts the records that decoded; the
    difference to the number of records is what was skipped as corrupt.
    ``short_side``: the dataset's ``image_short_side``, so that records are
    decoded exactly as a served raw image is (``preprocessing.decode_and_resize``)."""
    if not shard_paths:
        raise DataError("no TFRecord shards to read")
    files = tf.data.Dataset.from_tensor_slices(shard_paths)
    if training:
        files = files.shuffle(len(shard_paths), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(shard_paths), 8),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    feature_spec = schema.feature_spec()

    def decode(serialized):
        example = tf.io.parse_single_example(serialized, feature_spec)
        pixels = preprocessing.decode_and_resize(example[schema.IMAGE_ENCODED], image_size, interpolation,
                                                 short_side)
        return pixels, example[schema.LABEL], example[schema.SOURCE_URI]

    dataset = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # A record that fails to parse or decode is dropped instead of ending the run.
    dataset = dataset.ignore_errors(log_warning=True)
    if decoded is not None:

        def count(pixels, label, source):
            with tf.control_dependencies([decoded.assign_add(1)]):
                return tf.identity(pixels), label, source

        dataset = dataset.map(count)
    if num_examples * image_size * image_size * 3 * 4 <= CACHE_BUDGET_BYTES:
        dataset = dataset.cache()

    if with_source:
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def to_target(pixels, label, _source):
        if binary_mode:
            return pixels, tf.cast(tf.expand_dims(label, -1), tf.float32)
        return pixels, tf.one_hot(label, num_classes)

    dataset = dataset.map(to_target, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        dataset = dataset.shuffle(min(num_examples, 10_000), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augmentation is not None:
        layers = augmentation.layers(seed)
        if layers:
            pipeline = keras.Sequential(layers, name="augmentation")

            def augment(pixels, target):
                return pipeline(pixels, training=True), target

            dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
