"""tf.data input for training and evaluation, read from prepare's TFRecords.

Each record is decoded and resized once, to the pixels serving's preprocessing
(``kic.model.preprocessing.decode_and_resize``) makes of it, and kept as
uint8 until the model: training batches reach it as uint8 (float16 when
augmented on the host), and the model's input casts them to float32 on its own device,
so the host neither casts them nor copies four bytes a pixel to a GPU or
over a tf.data service's network (the backbone's pixel scaling is a layer
inside the model). Where the decoded images are kept decides how fast every
later epoch is:

* in memory, when they fit ``memory_cache_bytes`` (2 GiB by default: about
  14,000 images at 224 px);
* else in a cache on local disk (``disk_cache_dir``; about 150 KB an image at
  224 px, 450 KB at 380 px; tf.data's snapshot), so later epochs read raw
  pixels instead of decoding JPEGs: its files are read in a new order each
  epoch and mixed in a shuffle buffer;
* else nowhere: every epoch decodes again (serialized records are shuffled
  before decoding, which is cheap, rather than decoded images).

Augmentation (``kic.data.augmentation``: one resampling per image) runs
after the cache, on batches, so every epoch sees new variants; with
``augment_in_step`` the input only draws the transforms and the train step
resamples on its accelerator. With an
``EpochOrder``, each epoch's order and augmentation are a function of the
seed and the epoch's number rather than of how many passes this process
made, so that a run resumed from a checkpoint sees the epochs an
uninterrupted one does (and can skip the batches of an epoch it had trained).
Record order is deterministic when asked (training asks for it where it makes
a seeded run repeatable: on CPU), and free otherwise, which is faster. With
``data_service`` (the address of a tf.data service dispatcher) the decoding
and augmentation run on the service's workers instead of this machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import tensorflow as tf

from kic.data import schema
from kic.data.augmentation import Augmentation
from kic.errors import DataError
from kic.machine import available_cores
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


class EpochOrder:
    """Makes a training input's randomness a function of (seed, epoch): its
    shuffles and augmentation keys read ``epoch`` as a pass runs, set by
    ``begin``, and a pass first drops ``skip_batches`` batches (``end`` sets it
    back to 0 for the passes after the epoch's own). Without it the order of a
    pass depends on the passes made before it in this process, which a
    resumed run cannot replay."""

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_epoch")
        self.skip_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_skip_batches")

    def begin(self, epoch: int, skip_batches: int = 0) -> None:
        """Before the pass of ``epoch`` (0-based) starts."""
        self.epoch.assign(epoch)
        self.skip_batches.assign(skip_batches)

    def end(self) -> None:
        """After the pass of an epoch: later passes of it (batch-norm recalibration's) start at the start."""
        self.skip_batches.assign(0)

    def seed(self, seed: int) -> tf.Tensor:
        """The seed of a shuffle in the current epoch (to be read inside a pass's function)."""
        return tf.constant(seed, tf.int64) * 1_000_003 + self.epoch

    def keys(self, seed: int) -> tf.data.Dataset:
        """A stateless random key per batch: (the epoch's seed, the batch's index in the epoch)."""
        return tf.data.Dataset.range(2**62).map(lambda index: tf.stack([self.seed(seed), index]))

    def shuffle(self, dataset: tf.data.Dataset, buffer: int, seed: int) -> tf.data.Dataset:
        # flat_map calls its function when a pass begins: the shuffle is made anew with that epoch's seed.
        return tf.data.Dataset.from_tensors(0).flat_map(lambda _: dataset.shuffle(buffer, seed=self.seed(seed)))

    def unplayed(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """(index, element) of the elements from ``skip_batches`` on: the caller drops the index."""
        # A filter rather than a skip in a flat_map: tf.data's determinism only reaches the top-level
        # pipeline, not datasets inside a function.
        return dataset.enumerate().filter(lambda index, _element: index >= self.skip_batches)


def _reshuffled(dataset: tf.data.Dataset, buffer: int, seed: int, order: EpochOrder | None) -> tf.data.Dataset:
    if order is None:
        return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return order.shuffle(dataset, buffer, seed)


@dataclasses.dataclass(frozen=True)
class Images:
    """What the records are and what the model is given for them."""

    image_size: int
    interpolation: str
    num_classes: int
    # Targets: a float 0/1 column rather than one-hot.
    binary_mode: bool
    # The records read: the split's, or this worker's share of them (shard_size).
    num_examples: int
    # The dataset's image_short_side, so that records decode exactly as a served raw image does
    # (preprocessing.decode_prepared_and_resize).
    short_side: int = 0


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: a tf.Variable neither compares nor hashes as a value
class Reading:
    """How the records are read: in batches of what, kept where, decoded by whom."""

    # The global batch: tf.distribute splits it among the workers' replicas.
    batch_size: int
    # The in-memory cache's budget (None: DEFAULT_MEMORY_CACHE_BYTES; 0: never in memory).
    memory_cache_bytes: int | None = None
    # A local folder for the disk cache (empty: none); the caller removes it after use.
    disk_cache_dir: str = ""
    # A tf.data service dispatcher's address (grpc://host:port) whose workers decode instead of this machine.
    data_service: str = ""
    # The same order for the same seed (slower where cores wait on each other).
    deterministic: bool = True
    # This worker's share of the records in multi-worker training: every num_workers-th one.
    num_workers: int = 1
    worker_index: int = 0
    # An int64 variable counting the records that decoded; what it falls short of was skipped as corrupt.
    decoded: tf.Variable | None = None


@dataclasses.dataclass(frozen=True)
class Training:
    """What only a training input has: a new order every epoch, and augmentation."""

    seed: int = 0
    augmentation: Augmentation | None = None
    # Decides each epoch's order and draws from (seed, epoch), so a resumed run replays them
    # (ignored with a data service, whose workers decide the order).
    order: EpochOrder | None = None
    # The input only draws each image's transform and hands ((pixels uint8, transforms [batch, 8]), target)
    # to a train step that resamples on its device (kic.training.augmented), the same draws as here.
    augment_in_step: bool = False


@dataclasses.dataclass(frozen=True)
class InputOptions:
    images: Images
    reading: Reading
    # None: a validation input, read once an epoch in the records' order.
    training: Training | None = None


def make_dataset(shard_paths: list[str], options: InputOptions) -> tf.data.Dataset:
    """Batches of (pixels [0, 255], target) for a Keras model, which casts the
    pixels to its input's float32: uint8, or float16 when augmented here (whole
    levels and the interpolated ones in between, as the augmentation
    computes them). Targets are one-hot for multi-class and a float 0/1
    column in binary mode. (Evaluation reads ``evaluation_records``.)"""
    if not shard_paths:
        raise DataError("no TFRecord shards to read")
    data, reading, training = options.images, options.reading, options.training
    deterministic = reading.deterministic
    home = decoded_images_home(data.num_examples, data.image_size, memory_cache_bytes=reading.memory_cache_bytes,
                               disk_cache_dir=reading.disk_cache_dir, data_service=reading.data_service)
    in_memory, on_disk = home == MEMORY, home == DISK
    decode = _decoder(data.image_size, data.interpolation, data.short_side, reading.decoded, with_source=False)

    seed = training.seed if training else 0
    order = training.order if training and not reading.data_service else None
    # What is cached is read once, by whichever epoch comes first: with an EpochOrder it is read in the
    # same order whatever that epoch is, so that a resumed run caches what an uninterrupted one did (and,
    # on disk, write_disk_cache lets the epoch it resumes at read the images in that epoch's order).
    fixed_before_cache = order is not None and home != NOWHERE

    def mixed(dataset: tf.data.Dataset, buffer: int) -> tf.data.Dataset:
        if fixed_before_cache:
            return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
        return _reshuffled(dataset, buffer, seed, order)

    files = tf.data.Dataset.from_tensor_slices(shard_paths)
    if reading.num_workers > 1:
        # Every num_workers-th record of one fixed order (the files as given,
        # read deterministically): the workers' shares are disjoint, cover the
        # data, and stay the same each epoch whatever order each worker reads
        # its own share in. Each worker reads every record but decodes only
        # its own, the expensive part.
        records = _records(files, len(shard_paths), deterministic=True).shard(reading.num_workers,
                                                                              reading.worker_index)
    else:
        if training:
            files = mixed(files, len(shard_paths))
        records = _records(files, len(shard_paths), deterministic=deterministic)
    if training and not in_memory:  # the first (or every) epoch's order: cheap to mix before decoding
        records = mixed(records, min(data.num_examples, SHUFFLE_RECORDS))
    images = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    # A record that fails to parse or decode is dropped instead of ending the run.
    images = images.ignore_errors(log_warning=True)
    image_buffer = min(data.num_examples, SHUFFLE_IMAGES)
    if in_memory:
        images = images.cache()
        if training:
            images = _reshuffled(images, image_buffer, seed, order)
    elif on_disk:
        # With an EpochOrder, later epochs mix their images inside the snapshot's reader (made as a pass
        # begins, with that epoch's seed), so the first, which writes the cache, spares a shuffle of decoded
        # images; without one, a shuffle made there would repeat its order every epoch, so it stays outside.
        mixed_in_reader = training is not None and order is not None
        images = _snapshot(images, reading.disk_cache_dir, reshuffle=training is not None, seed=seed,
                           deterministic=deterministic, order=order,
                           buffer=image_buffer if mixed_in_reader else 0)
        if training and not mixed_in_reader:
            images = _reshuffled(images, image_buffer, seed, order)

    batches = images.batch(reading.batch_size)
    augmentation = training.augmentation if training else None
    draws = augmentation is not None and augmentation.changes_anything
    if draws:
        # A stateless key a batch: the same seed gives the same run, and every epoch new draws
        # (with an EpochOrder, the epoch's own, whatever ran before).
        keys = (order.keys(seed) if order is not None
                else tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2))
        batches = tf.data.Dataset.zip(batches, keys)
    if order is not None:
        # Before the map, so that a resumed epoch's skipped batches are neither augmented nor converted.
        batches = order.unplayed(batches)

    def to_model(*element):
        # One map a batch takes what the stages above carried only for themselves (a per-image map
        # would cost a function call an image): [batch index,] (images [, key]).
        if order is not None:
            element = element[1]
        batch, key = element if draws else (element, None)
        pixels, label = batch[1] if on_disk else batch  # on disk, each image's index chose its cache file
        if data.binary_mode:
            target = tf.cast(tf.expand_dims(label, -1), tf.float32)
        else:
            target = tf.one_hot(label, data.num_classes)
        if key is None:
            return pixels, target
        if training.augment_in_step:
            shape = tf.shape(pixels)
            return (pixels, augmentation.draw(shape[0], key, height=shape[1], width=shape[2])), target
        return augmentation(pixels, key), target  # float16

    batches = batches.map(to_model, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return _with_options(_served(batches, reading.data_service).prefetch(tf.data.AUTOTUNE))


def write_disk_cache(dataset: tf.data.Dataset, order: EpochOrder) -> None:
    """Writes a training input's disk cache in a pass that yields nothing
    (every batch is skipped before it is converted). A run resumed after its
    first epoch calls this first: the pass that writes the cache gives the
    images in the order they are written, which is the first epoch's, so
    without it the resumed epoch would train on other images than the
    interrupted one did; read back from the cache, they come in the epoch's
    own order, as an uninterrupted run reads them."""
    order.begin(0, skip_batches=2**62)
    for _ in dataset:
        pass
    order.end()


def evaluation_records(shard_paths: list[str], *, image_size: int, interpolation: str, short_side: int,
                       batch_size: int) -> tf.data.Dataset:
    """Batches of (pixels float32 [0, 255], label index, source URI) for
    evaluation reports, decoded as ``make_dataset`` decodes them, in the
    split's own order (the same for every model and every pass) and
    cached nowhere: the reports read them once."""
    if not shard_paths:
        raise DataError("no TFRecord shards to read")
    files = tf.data.Dataset.from_tensor_slices(shard_paths)
    decode = _decoder(image_size, interpolation, short_side, None, with_source=True)
    images = (_records(files, len(shard_paths), deterministic=True)
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .ignore_errors(log_warning=True))  # a corrupt record is skipped, as in training
    batches = images.batch(batch_size).map(lambda pixels, label, source: (tf.cast(pixels, tf.float32), label, source))
    return _with_options(batches.prefetch(tf.data.AUTOTUNE))


def _records(files: tf.data.Dataset, count: int, *, deterministic: bool) -> tf.data.Dataset:
    """The serialized records of ``files`` (``count`` of them), up to 8 read at a time."""
    return files.interleave(tf.data.TFRecordDataset, cycle_length=min(count, 8),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def shard_size(num_examples: int, num_workers: int, worker_index: int) -> int:
    """How many of ``num_examples`` records make_dataset gives worker ``worker_index``."""
    return len(range(worker_index, num_examples, num_workers))


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with its options. As tf.distribute must take it: already sharded by worker
    (``num_workers``), so not sharded again; its batches are global ones,
    which tf.distribute splits among the replicas. Its parallel maps run
    a call per core: left to itself, tf.data's autotuning sometimes
    settles the decode on fewer cores than there are (measured on 2 cores:
    about 1,450 images/s instead of 1,950, and more CPU time per image).

    Up to 16 cores that is all autotuning could give (the work is CPU-bound),
    so it is turned off there: with it on, ending a pass waits for its
    model's optimization in flight, measured on 2 cores at 250-320 ms in
    one pass out of three to ten, every epoch, for training and validation
    alike (a third of a 900-image epoch). Beyond 16 cores it stays on, to
    raise the maps past the 16 they start with."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    cores = available_cores()
    # At most 16 to start with: on a large machine each in-flight batch of a map holds tens of MB.
    options.autotune.min_parallelism = options.autotune.initial_parallelism = min(cores, 16)
    options.autotune.enabled = cores > 16
    return dataset.with_options(options)


def _decoder(image_size: int, interpolation: str, short_side: int, decoded: tf.Variable | None,
             with_source: bool):
    feature_spec = schema.feature_spec()
    if not with_source:  # neither parsed nor cached where nobody reads it
        del feature_spec[schema.SOURCE_URI]

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
        if with_source:
            return pixels, example[schema.LABEL], example[schema.SOURCE_URI]
        return pixels, example[schema.LABEL]

    return decode


def _served(dataset: tf.data.Dataset, data_service: str) -> tf.data.Dataset:
    """The dataset as the tf.data service's workers produce it: each worker
    reads its own shard files (dynamic sharding), so an epoch is one pass."""
    if not data_service:
        return dataset
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=data_service))


def _snapshot(images: tf.data.Dataset, folder: str, *, reshuffle: bool, seed: int,
              deterministic: bool, order: EpochOrder | None = None, buffer: int = 0) -> tf.data.Dataset:
    """``images`` as (index, image) pairs, written to ``folder`` as they pass in
    the first epoch and read back from there in the later ones. The index
    picks an image's file; the caller drops it with a batch's other
    bookkeeping, since a map of its own costs a function call an image
    (measured: 8% of the first epoch's wall-clock, a fifth of the later ones'
    CPU). tf.data's snapshot rather than its file cache: it writes on its own
    threads, where the cache writes in the consumer's path and costs a third
    of the first epoch (measured), and it reads several files at once. With
    ``reshuffle``, a later epoch reads the files in a new order and, given a
    ``buffer`` and an ``order``, mixes the images in a buffer of that many;
    the first epoch passes the images on in the order they came (its records
    were mixed before decoding), which spares it a shuffle of decoded images
    (measured: ~4% of its CPU time). Without ``reshuffle``, in the order
    written."""
    files = SNAPSHOT_FILES

    def read(shards: tf.data.Dataset) -> tf.data.Dataset:
        if not reshuffle:
            return shards.interleave(lambda shard: shard, cycle_length=files, num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=deterministic)
        # reader_func runs when a pass begins: order.seed is that epoch's.
        shards = shards.shuffle(files, seed=seed if order is None else order.seed(seed),
                                reshuffle_each_iteration=order is None)
        images = shards.interleave(lambda shard: shard, cycle_length=files, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=deterministic)
        return order.shuffle(images, buffer, seed) if buffer and order is not None else images

    return images.enumerate().snapshot(folder, compression=None, reader_func=read,
                                       shard_func=lambda index, _image: index % files)


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
