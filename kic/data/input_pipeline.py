"""tf.data input for training and evaluation, read from prepare's TFRecords.

Each record is decoded and resized once, to the pixels serving's preprocessing
(``kic.model.preprocessing.decode_and_resize``) makes of it, and kept as
uint8 until the model: the backbone's pixel scaling is a layer inside it, so
the batch only has to become float32 on its way in. Where the decoded images
are kept decides how fast every later epoch is:

* in memory, when they fit ``memory_cache_bytes`` (2 GiB by default: about
  14,000 images at 224 px);
* else in a cache on local disk (``disk_cache_dir``; about 150 KB an image at
  224 px, 450 KB at 380 px; tf.data's snapshot), so later epochs read raw
  pixels instead of decoding JPEGs: its files are read in a new order each
  epoch and mixed in a shuffle buffer;
* else nowhere: every epoch decodes again (serialized records are shuffled
  before decoding, which is cheap, rather than decoded images).

Augmentation runs after the cache, on batches, so every epoch sees new
variants. With an ``EpochOrder``, each epoch's order and augmentation are a
function of the seed and the epoch's number rather than of how many passes
this process made, so that a run resumed from a checkpoint sees the epochs an
uninterrupted one does (and can skip the batches of an epoch it had trained).
Record order is deterministic when asked (training asks for it where it makes
a seeded run repeatable: on CPU), and free otherwise, which is faster. With
``data_service`` (the address of a tf.data service dispatcher) the decoding
and augmentation run on the service's workers instead of this machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import keras
import tensorflow as tf

from kic.config import TrainingConfig
from kic.data import schema
from kic.errors import DataError
from kic.model import preprocessing

# Decoded images are kept in memory up to this many bytes.
DEFAULT_MEMORY_CACHE_BYTES = 2 * 1024**3
# Decoded images mixed across shards in the training order: about 300 MB at 224 px.
SHUFFLE_IMAGES = 2048
# Serialized records (tens of KB each) mixed before decoding when nothing is cached.
SHUFFLE_RECORDS = 10_000
# A disk cache is only written where it leaves this much room besides.
DISK_HEADROOM_BYTES = 1024**3
# Where decoded images are kept between epochs (decoded_images_home).
MEMORY, DISK, NOWHERE = "memory", "disk", "nowhere"
# Files a disk cache is written to and read back from in parallel.
SNAPSHOT_FILES = 8
_ABOVE_MINUS_ONE = math.nextafter(-1.0, 0.0)  # the lowest zoom bound Keras 3 accepts


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The three reference transforms, each given to its own layer by keyword.

    A rotation or zoom factor ``f`` means what the reference's table says:

    * ``f > 0``: the symmetric range [-f, f], Keras's reading of a single
      number, which the reference passes through (so its users' default 0.2
      turns both ways);
    * ``f < 0``: one way only, the range [f, 0]: the table gives negative
      values as "clockwise" and "zoom in". The reference's Keras 2 refused a
      negative rotation and read a negative zoom as [f, -f]; Keras 3 drops the
      sign; neither says what the table says.
    * ``f = 0`` switches the transform off.

    Zoom scales the image by ``1 + z``, ``z`` drawn from the range; the
    table's ends (1 and -1) both reach z = -1, scale 0, where the centre pixel
    fills the image. Keras 2 allowed that bound; Keras 3 refuses it, so it
    becomes the next float above -1: the same distribution (a draw of exactly
    -1 has probability zero).
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
            layers.append(keras.layers.RandomRotation(factor=factor_range(self.rotation), fill_mode="reflect",
                                                      seed=seed + 1, name="random_rotation"))
        if self.zoom:
            lower, upper = factor_range(self.zoom)
            layers.append(keras.layers.RandomZoom(height_factor=(max(lower, _ABOVE_MINUS_ONE), upper),
                                                  fill_mode="reflect", seed=seed + 2, name="random_zoom"))
        return layers


def factor_range(factor: float) -> tuple[float, float]:
    """The (lower, upper) range of a reference rotation or zoom factor (see Augmentation)."""
    return (-factor, factor) if factor > 0 else (factor, 0.0)


class EpochOrder:
    """Makes a training input's randomness a function of (seed, epoch): its
    shuffles read ``epoch`` when a pass begins, its augmentation layers'
    generators are reset from it by ``begin``, and a pass first drops
    ``skip_batches`` batches (after augmenting them, so the rest of the epoch
    is augmented as it would have been; ``end`` sets it back to 0 for the
    passes after the epoch's own). Without it the order of a pass
    depends on the passes made before it in this process, which a resumed
    run cannot replay."""

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_epoch")
        self.skip_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_skip_batches")
        self._generators: list = []  # (keras SeedGenerator, its initial state)

    def begin(self, epoch: int, skip_batches: int = 0) -> None:
        """Before the pass of ``epoch`` (0-based) starts."""
        self.epoch.assign(epoch)
        self.skip_batches.assign(skip_batches)
        for generator, initial in self._generators:
            # A generator's state counts its draws in its second word: each epoch starts its own range.
            generator.state.assign(tf.constant([initial[0], initial[1] + epoch * 2**20], dtype=generator.state.dtype))

    def end(self) -> None:
        """After the pass of an epoch: later passes of it (batch-norm recalibration's) start at the start."""
        self.skip_batches.assign(0)

    def seed(self, seed: int) -> tf.Tensor:
        """The seed of a shuffle in the current epoch (to be read inside a pass's function)."""
        return tf.constant(seed, tf.int64) * 1_000_003 + self.epoch

    def shuffle(self, dataset: tf.data.Dataset, buffer: int, seed: int) -> tf.data.Dataset:
        # flat_map calls its function when a pass begins: the shuffle is made anew with that epoch's seed.
        return tf.data.Dataset.from_tensors(0).flat_map(lambda _: dataset.shuffle(buffer, seed=self.seed(seed)))

    def skip(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        # A filter rather than a skip in a flat_map: tf.data's determinism only reaches the top-level
        # pipeline, not datasets inside a function, and the augmentation's random draws need it.
        return (dataset.enumerate()
                .filter(lambda index, _batch: index >= self.skip_batches)
                .map(lambda _index, batch: batch))

    def follow(self, layers: list[keras.layers.Layer]) -> None:
        self._generators += [(layer.generator, layer.generator.state.numpy()) for layer in layers]


def _reshuffled(dataset: tf.data.Dataset, buffer: int, seed: int, order: EpochOrder | None) -> tf.data.Dataset:
    if order is None:
        return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return order.shuffle(dataset, buffer, seed)


def make_dataset(shard_paths: list[str], *, image_size: int, interpolation: str, batch_size: int,
                 num_classes: int, binary_mode: bool, training: bool, num_examples: int,
                 augmentation: Augmentation | None = None, seed: int = 0,
                 with_source: bool = False, decoded: tf.Variable | None = None,
                 memory_cache_bytes: int | None = None, disk_cache_dir: str = "",
                 data_service: str = "", deterministic: bool = True, short_side: int = 0,
                 order: EpochOrder | None = None) -> tf.data.Dataset:
    """Batches of (pixels float32 [0, 255], target); targets are one-hot for
    multi-class and a float 0/1 column in binary mode. With ``with_source`` the
    elements are (pixels, label index, source URI) for evaluation reports.

    ``decoded``, an int64 variable, counts the records that decoded; the
    difference to the number of records is what was skipped as corrupt.
    ``memory_cache_bytes``: the in-memory cache budget (None: the default; 0:
    never cache in memory). ``disk_cache_dir``: a local folder for the disk
    cache (empty: none); the caller removes it after use.
    ``data_service``: a tf.data service dispatcher's address (grpc://host:port).
    ``deterministic``: the same order for the same seed (slower where cores wait on each other).
    ``short_side``: the dataset's ``image_short_side``, so that records are
    decoded exactly as a served raw image is (``preprocessing.decode_prepared_and_resize``).
    ``order``: an EpochOrder that decides each training epoch's order (not with ``data_service``)."""
    if not shard_paths:
        raise DataError("no TFRecord shards to read")
    home = decoded_images_home(num_examples, image_size, memory_cache_bytes=memory_cache_bytes,
                               disk_cache_dir=disk_cache_dir, data_service=data_service)
    in_memory, on_disk = home == MEMORY, home == DISK
    decode = _decoder(image_size, interpolation, short_side, decoded)

    order = order if training and not data_service else None
    # What is cached is read once, by whichever epoch comes first: with an EpochOrder it is read in the
    # same order whatever that epoch is, so that a resumed run caches what an uninterrupted one did.
    fixed_before_cache = order is not None and home != NOWHERE

    def mixed(dataset: tf.data.Dataset, buffer: int) -> tf.data.Dataset:
        if fixed_before_cache:
            return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
        return _reshuffled(dataset, buffer, seed, order)

    files = tf.data.Dataset.from_tensor_slices(shard_paths)
    if training:
        files = mixed(files, len(shard_paths))
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(shard_paths), 8),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if training and not in_memory:  # the first (or every) epoch's order: cheap to mix before decoding
        records = mixed(records, min(num_examples, SHUFFLE_RECORDS))
    images = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    # A record that fails to parse or decode is dropped instead of ending the run.
    images = images.ignore_errors(log_warning=True)
    if in_memory:
        images = images.cache()
    elif on_disk:
        images = _snapshot(images, disk_cache_dir, reshuffle=training, seed=seed, deterministic=deterministic,
                           order=order)
    if training and (in_memory or on_disk):
        images = _reshuffled(images, min(num_examples, SHUFFLE_IMAGES), seed, order)

    batches = images.batch(batch_size)
    if with_source:
        batches = batches.map(lambda pixels, label, source: (tf.cast(pixels, tf.float32), label, source))
        return _served(batches, data_service).prefetch(tf.data.AUTOTUNE)

    def to_model(pixels, label, _source):
        target = tf.cast(tf.expand_dims(label, -1), tf.float32) if binary_mode else tf.one_hot(label, num_classes)
        return tf.cast(pixels, tf.float32), target

    batches = batches.map(to_model, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if training and augmentation is not None:
        layers = augmentation.layers(seed)
        if layers:
            pipeline = keras.Sequential(layers, name="augmentation")
            batches = batches.map(lambda pixels, target: (pipeline(pixels, training=True), target),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
            if order is not None:
                order.follow(layers)
    if order is not None:
        batches = order.skip(batches)
    return _served(batches, data_service).prefetch(tf.data.AUTOTUNE)


def _decoder(image_size: int, interpolation: str, short_side: int, decoded: tf.Variable | None):
    feature_spec = schema.feature_spec()

    def decode(serialized):
        example = tf.io.parse_single_example(serialized, feature_spec)
        pixels = preprocessing.decode_prepared_and_resize(example[schema.IMAGE_ENCODED], image_size, interpolation,
                                                          short_side)
        pixels = tf.cast(pixels, tf.uint8)  # whole numbers already: exact
        if decoded is not None:
            with tf.control_dependencies([pixels]):  # counted only once the decode succeeded
                counted = decoded.assign_add(1)
            with tf.control_dependencies([counted]):
                pixels = tf.identity(pixels)
        return pixels, example[schema.LABEL], example[schema.SOURCE_URI]

    return decode


def _served(dataset: tf.data.Dataset, data_service: str) -> tf.data.Dataset:
    """The dataset as the tf.data service's workers produce it: each worker
    reads its own shard files (dynamic sharding), so an epoch is one pass."""
    if not data_service:
        return dataset
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=data_service))


def _snapshot(images: tf.data.Dataset, folder: str, *, reshuffle: bool, seed: int,
              deterministic: bool, order: EpochOrder | None = None) -> tf.data.Dataset:
    """``images``, written to ``folder`` as they pass in the first epoch and
    read back from there in the later ones. tf.data's snapshot rather than its
    file cache: it writes on its own threads, where the cache writes in the
    consumer's path and costs a third of the first epoch (measured), and it
    reads several files at once (with ``reshuffle``, in a new order each
    epoch; without, in the order written)."""
    files = SNAPSHOT_FILES

    def read(shards: tf.data.Dataset) -> tf.data.Dataset:
        if reshuffle:  # reader_func runs when a pass begins: order.seed is that epoch's
            shards = shards.shuffle(files, seed=seed if order is None else order.seed(seed),
                                    reshuffle_each_iteration=order is None)
        return shards.interleave(lambda shard: shard, cycle_length=files, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=deterministic)

    return (images.enumerate()
            .snapshot(folder, compression=None, reader_func=read, shard_func=lambda index, _image: index % files)
            .map(lambda _index, image: image))


def decoded_images_home(num_examples: int, image_size: int, *, memory_cache_bytes: int | None = None,
                        disk_cache_dir: str = "", data_service: str = "") -> str:
    """Where make_dataset keeps the decoded images between epochs: MEMORY, DISK or NOWHERE."""
    budget = DEFAULT_MEMORY_CACHE_BYTES if memory_cache_bytes is None else memory_cache_bytes
    size = num_examples * image_size * image_size * 3
    if data_service:
        return NOWHERE
    if size <= budget:
        return MEMORY
    return DISK if _room_for(disk_cache_dir, size) else NOWHERE


def _room_for(folder: str, size: int) -> bool:
    if not folder:
        return False
    os.makedirs(folder, exist_ok=True)
    return shutil.disk_usage(folder).free >= size * 1.1 + DISK_HEADROOM_BYTES
