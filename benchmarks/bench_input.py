"""The training input, alone: kic's make_dataset against the plain Keras peer, on real photographs.

    .venv/bin/python benchmarks/bench_input.py [--images 2000] [--epochs 4] [--rounds 3] [--sizes 500x375,1024x768]

The images are crops of the two photographs scikit-learn ships
(sklearn.datasets.load_sample_images: a temple in China, a flower; 640x427),
randomly placed, flipped and tinted, saved as JPEG (quality 90) at each size,
in 5 classes. For each size, in one process, it times passes (epochs) over:

* peer: ``keras.utils.image_dataset_from_directory`` on the original files
  (224 px, batch 32, bilinear, shuffled) + prefetch: what the keras-io
  examples do; it decodes every file every epoch;
* kic: prepare once (timed apart: it is paid once per dataset), then
  ``make_dataset``, read as training reads it (with an EpochOrder told each
  epoch), with its decoded images kept in memory (small datasets),
  on local disk (``memory_cache_bytes=0`` with ``disk_cache_dir``: the
  large-dataset path), and nowhere (every epoch decodes again);
* levers, one at a time, on the no-cache path: the pipeline as it was
  (float32 images, always antialiased, shuffled after decoding), then with
  each change added: antialiasing only from a 2x shrink, uint8 until the
  model with records shuffled before decoding, and free ordering; what
  parsing records a batch at a time would change, and what serving's decode
  (EXIF read, downscale) would cost on prepare's records;
  and the disk cache as it was (tf.data's file cache, one per shard);
* with augmentation (flip + rotation + zoom) on both sides: the peer with
  Keras's three layers; kic with its one-resampling transform
  (kic.data.augmentation) both ways: resampled by the input on the host
  (XLA-compiled, what CPU-only training does), and resampled in the train
  step (what training does on a GPU: the host only draws the transforms;
  the row is the host's part, and a line gives the warp's own cost on this
  CPU); as before (TensorFlow's ImageProjectiveTransformV3 on the host), in
  the same rounds; and, as a lever, kic's input with Keras's layers. Then
  the host's CPU an image with augmentation against without it (disk cache,
  later epochs: the large-dataset path).

It prints images per second for the first epoch and for the later ones (their
median), each against the peer's, and the process's CPU milliseconds per image
(steadier than wall-clock time when other work shares the machine). The peer
and kic's three places for decoded images are measured ``--rounds`` times,
taking turns, each round from scratch (a new disk cache too), and each figure
is the median over the rounds: a burst of other work on a shared machine then
moves no ratio. Not a test: nothing is asserted, numbers are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from kic.data import dataset_info, input_pipeline, schema  # noqa: E402
from kic.data.augmentation import Augmentation, warp  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.model import preprocessing  # noqa: E402
from kic.parameters import derive_short_side  # noqa: E402

SIZE, BATCH, CLASSES = 224, 32, 5
AUGMENTATION = Augmentation(flip="horizontal_and_vertical", rotation=0.2, zoom=0.1)


def keras_augmented(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The same augmentation as plain Keras does it: three layers, three passes (kic's before)."""
    layers = keras.Sequential([
        keras.layers.RandomFlip(mode=AUGMENTATION.flip, seed=0),
        keras.layers.RandomRotation(factor=(-AUGMENTATION.rotation, AUGMENTATION.rotation), fill_mode="reflect",
                                    seed=1),
        keras.layers.RandomZoom(height_factor=(-AUGMENTATION.zoom, AUGMENTATION.zoom), fill_mode="reflect", seed=2)])
    return dataset.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)


def kernel_augmented(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """An in-step input resampled on the host by TensorFlow's kernel in float16: kic's augmentation before."""
    def resample(inputs, target):
        pixels, transforms = inputs
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(pixels, tf.float16), transforms=transforms, output_shape=tf.shape(pixels)[1:3],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT"), target

    return dataset.map(resample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(tf.data.AUTOTUNE)


def step_warp_ms(batches: int = 20) -> float:
    """CPU ms an image of the in-step warp compiled by XLA on this CPU (on a GPU it runs on the device)."""
    pixels = tf.cast(tf.random.uniform((BATCH, SIZE, SIZE, 3), 0, 256, tf.int32, seed=0), tf.uint8)
    transforms = AUGMENTATION.draw(BATCH, tf.constant([1, 2], tf.int64), height=SIZE, width=SIZE)
    step = tf.function(lambda pixels, transforms: tf.reduce_sum(warp(pixels, transforms)), jit_compile=True)
    float(step(pixels, transforms))
    started = time.process_time()
    for _ in range(batches):
        float(step(pixels, transforms))
    return 1000 * (time.process_time() - started) / (batches * BATCH)


def make_photos(root: str, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """Crops of real photographs, scaled to ``size`` (width, height): photo statistics, not noise."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(image) for image in load_sample_images().images]
    width, height = size
    for index in range(count):
        photo = photos[index % len(photos)]
        crop_w = int(rng.integers(photo.width // 2, photo.width + 1))
        crop_h = min(photo.height, int(crop_w * height / width))
        left, top = int(rng.integers(0, photo.width - crop_w + 1)), int(rng.integers(0, photo.height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.6, 1.4)))
        folder = os.path.join(root, f"class_{index % CLASSES}")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{index:05d}.jpg"), quality=90)


def passes(dataset: tf.data.Dataset, epochs: int,
           order: input_pipeline.EpochOrder | None = None) -> tuple[int, list[float], list[float]]:
    """Images per pass, and each pass's wall-clock and CPU seconds (every batch pulled to the host); with
    an EpochOrder, each pass is told its epoch first, as training does."""
    seconds, cpu_seconds, count = [], [], 0
    for epoch in range(epochs):
        if order is not None:
            order.begin(epoch)
        started, cpu_started, count = time.perf_counter(), time.process_time(), 0
        for batch in dataset:
            count += int(batch[1].shape[0])  # the targets: the pixels are a pair when the step augments
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return count, seconds, cpu_seconds


def kic_images(count: int, short_side: int) -> input_pipeline.Images:
    """What kic's input reads here: ``count`` prepared images, decoded to SIZE."""
    return input_pipeline.Images(image_size=SIZE, interpolation="bilinear", num_classes=CLASSES, binary_mode=False,
                                 num_examples=count, short_side=short_side)


def peer(folder: str, augmentation: bool) -> tf.data.Dataset:
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE), batch_size=BATCH,
                                                       label_mode="categorical", shuffle=True, seed=0, verbose=False)
    if augmentation:
        dataset = keras_augmented(dataset)
    return dataset.prefetch(tf.data.AUTOTUNE)


def legacy(shards: list[str], count: int, short_side: int, *, antialias: str, uint8: bool, deterministic: bool,
           decode: str = "prepared", parse: str = "record") -> tf.data.Dataset:
    """The no-cache input with the levers switched by hand: ``antialias`` "always" (the pipeline before)
    or "from 2x" (now); ``uint8`` also shuffles records before decoding, as now; ``decode`` "prepared"
    (training's decode of prepare's records, now) or "serving" (serving's, which also reads EXIF and
    downscales a large upload: no-ops on prepare's records); ``parse`` "record" (one record at a time, as
    now) or "batch" (64 records parsed at once, then one at a time again for the decode)."""
    spec = schema.feature_spec()

    def decode_record(serialized):
        example = tf.io.parse_single_example(serialized, spec) if parse == "record" else serialized
        encoded = example[schema.IMAGE_ENCODED]
        if decode == "serving":
            pixels = preprocessing.decode_and_resize(encoded, SIZE, "bilinear", short_side)
        elif antialias == "always":
            image = tf.io.decode_jpeg(encoded, channels=3, dct_method=preprocessing.JPEG_DCT_METHOD)
            pixels = tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), [SIZE, SIZE], antialias=True), 0,
                                      255)
        else:
            pixels = preprocessing.decode_prepared_and_resize(encoded, SIZE, "bilinear", short_side)
        return (tf.cast(pixels, tf.uint8) if uint8 else pixels), tf.one_hot(example[schema.LABEL], CLASSES)

    files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=0)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(shards), 8),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if uint8:
        records = records.shuffle(min(count, input_pipeline.SHUFFLE_RECORDS), seed=0)
    if parse == "batch":
        records = records.batch(64).map(lambda serialized: tf.io.parse_example(serialized, spec),
                                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).unbatch()
    images = records.map(decode_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if not uint8:
        images = images.shuffle(min(count, 10_000), seed=0)
    batches = images.batch(BATCH)
    if uint8:
        batches = batches.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return batches.prefetch(tf.data.AUTOTUNE)


def file_cached(shards: list[str], count: int, short_side: int, folder: str) -> tf.data.Dataset:
    """The disk cache as it was: tf.data's file cache, one per shard, inside the interleave."""
    spec = schema.feature_spec()

    def decode_record(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        pixels = preprocessing.decode_prepared_and_resize(example[schema.IMAGE_ENCODED], SIZE, "bilinear", short_side)
        return tf.cast(pixels, tf.uint8), tf.one_hot(example[schema.LABEL], CLASSES)

    def cached_shard(path):
        name = tf.strings.split(path, "/")[-1]
        return tf.data.TFRecordDataset(path).map(decode_record, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=False).cache(tf.strings.join([folder, "/", name]))

    files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=0)
    images = files.interleave(cached_shard, cycle_length=min(len(shards), 8), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=False).shuffle(min(count, input_pipeline.SHUFFLE_IMAGES), seed=0)
    return images.batch(BATCH).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class Figures:
    """One dataset's passes, as medians over rounds: images/s and the process's CPU ms an image,
    in the first pass and in the later ones (their median: robust to one noisy pass)."""

    first_rate: float
    later_rate: float
    first_cpu_ms: float
    later_cpu_ms: float

    @classmethod
    def of(cls, runs: list[tuple[int, list[float], list[float]]]) -> Figures:
        median = statistics.median
        return cls(first_rate=median([images / seconds[0] for images, seconds, _ in runs]),
                   later_rate=median([images / median(seconds[1:]) for images, seconds, _ in runs]),
                   first_cpu_ms=median([1000 * cpu[0] / images for images, _, cpu in runs]),
                   later_cpu_ms=median([1000 * median(cpu[1:]) / images for images, _, cpu in runs]))


def row(name: str, figures: Figures, reference: Figures | None) -> Figures:
    reference = reference or figures
    wall = f"{figures.first_rate / reference.first_rate:6.2f}x {figures.later_rate / reference.later_rate:6.2f}x"
    # CPU time per image holds better than wall-clock time on a shared machine: "per core" is the
    # peer's CPU time for an image over kic's.
    core = (f"{reference.first_cpu_ms / figures.first_cpu_ms:6.2f}x "
            f"{reference.later_cpu_ms / figures.later_cpu_ms:6.2f}x")
    print(f"  {name:58} {figures.first_rate:8.0f} {figures.later_rate:8.0f}   {wall}   "
          f"{figures.first_cpu_ms:6.2f} {figures.later_cpu_ms:6.2f}   {core}", flush=True)
    return figures


def bench_size(scratch: str, size: tuple[int, int], images: int, epochs: int, rounds: int) -> None:
    folder, prepared = os.path.join(scratch, "photos"), os.path.join(scratch, "prepared")
    make_photos(folder, images, size)
    started = time.perf_counter()
    short_side = derive_short_side(backbone="", image_size=SIZE, requested=0)
    prepare_dataset(PrepareOptions(source=folder, output_dir=prepared, validation_fraction=0.1, test_fraction=0.0,
                                   image_short_side=short_side))
    prepare_seconds = time.perf_counter() - started
    info = dataset_info.load(prepared)
    shards, count = info.shard_paths(prepared, "train"), info.splits["train"].num_examples
    print(f"\n{images} photos {size[0]}x{size[1]} JPEG, {CLASSES} classes, {os.cpu_count()} cores; prepare "
          f"(once per dataset) {images / prepare_seconds:.0f} img/s; kic reads {count} training images; "
          f"medians of {rounds} rounds")
    print(f"  {'images/s':58} {'epoch 1':>8} {'later':>8}   {'vs peer (wall)':>15}"
          f"   CPU ms an image   vs peer per core (CPU)")

    disk: dict[tuple[bool, str], Figures] = {}  # (augmented, contender): figures, for the host CPU comparison
    for augment in (False, True):
        print(f" {'with augmentation (flip, rotation, zoom)' if augment else 'no augmentation'}:")
        augmentation = AUGMENTATION if augment else None

        def kic(augmentation=augmentation, augment_in_step=False,
                **reading) -> tuple[tf.data.Dataset, input_pipeline.EpochOrder]:
            order = input_pipeline.EpochOrder()  # as training reads its input
            return input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
                kic_images(count, short_side), input_pipeline.Reading(batch_size=BATCH, deterministic=False, **reading),
                input_pipeline.Training(augmentation=augmentation, order=order,
                                        augment_in_step=augment_in_step))), order

        def on_disk(cache: str) -> tuple[tf.data.Dataset, input_pipeline.EpochOrder]:
            return kic(memory_cache_bytes=0, disk_cache_dir=cache)

        contenders = {"peer: image_dataset_from_directory + prefetch":
                      lambda _cache, augment=augment: (peer(folder, augment), None),
                      "kic, decoded images in memory (small datasets)": lambda _cache: kic(),
                      "kic, decoded images on local disk (large datasets)": on_disk,
                      "kic, nothing cached (decodes every epoch)": lambda _cache: kic(memory_cache_bytes=0)}
        if augment:
            # The host's part when the train step resamples (on a GPU), and the host's augmentation before.
            contenders["kic, on local disk, resampled in the train step: host"] = (
                lambda cache: kic(memory_cache_bytes=0, disk_cache_dir=cache, augment_in_step=True))
            contenders["kic, nothing cached, resampled in the train step: host"] = (
                lambda _cache: kic(memory_cache_bytes=0, augment_in_step=True))

            def before(cache: str) -> tuple[tf.data.Dataset, input_pipeline.EpochOrder]:
                dataset, order = kic(memory_cache_bytes=0, disk_cache_dir=cache, augment_in_step=True)
                return kernel_augmented(dataset), order

            contenders["as before: on local disk, TF's kernel on the host"] = before
        runs: dict[str, list] = {name: [] for name in contenders}
        cache_bytes = 0
        for _ in range(rounds):  # taking turns, so that a burst of other work hits every contender alike
            for name, make in contenders.items():
                cache = tempfile.mkdtemp(dir=scratch, prefix="cache-")
                dataset, order = make(cache)
                runs[name].append(passes(dataset, epochs, order))
                cache_bytes = sum(os.path.getsize(os.path.join(where, file))
                                  for where, _, files in os.walk(cache) for file in files) or cache_bytes
                shutil.rmtree(cache)
        names = list(contenders)
        reference = row(names[0], Figures.of(runs[names[0]]), None)
        for name in names[1:]:
            disk[augment, name] = row(name, Figures.of(runs[name]), reference)
        print(f"  {'':58} (the disk cache: {cache_bytes / count / 1024:.0f} KB an image)")

        def once(name: str, dataset: tf.data.Dataset, reference: Figures = reference) -> None:
            row(name, Figures.of([passes(dataset, epochs)]), reference)

        if not augment:
            print("  levers on the no-cache path, one at a time (one round each):")
            for name, options in (("as before: float32, always antialiased, deterministic",
                                   dict(antialias="always", uint8=False, deterministic=True)),
                                  ("+ antialiased only from a 2x shrink",
                                   dict(antialias="from 2x", uint8=False, deterministic=True)),
                                  ("+ uint8 to the model, records shuffled before decoding",
                                   dict(antialias="from 2x", uint8=True, deterministic=True)),
                                  ("+ free ordering", dict(antialias="from 2x", uint8=True, deterministic=False)),
                                  ("  the same with records parsed 64 at a time",
                                   dict(antialias="from 2x", uint8=True, deterministic=False, parse="batch")),
                                  ("  the same with serving's decode (reads EXIF, downscales)",
                                   dict(antialias="from 2x", uint8=True, deterministic=False, decode="serving"))):
                once(name, legacy(shards, count, short_side, **options))
            print("  the disk cache as it was:")
            cache = tempfile.mkdtemp(dir=scratch, prefix="file-cache-")
            once("tf.data file cache per shard (now: tf.data snapshot)", file_cached(shards, count, short_side, cache))
            shutil.rmtree(cache)
        else:
            print("  lever: augmentation as Keras's three layers (before), on kic's in-memory input:")
            dataset = input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
                kic_images(count, short_side), input_pipeline.Reading(batch_size=BATCH, deterministic=False),
                input_pipeline.Training()))
            once("kic in memory + Keras RandomFlip/Rotation/Zoom", keras_augmented(dataset))
            plain = disk[False, "kic, decoded images on local disk (large datasets)"].later_cpu_ms
            augmented = {"on the host": "kic, decoded images on local disk (large datasets)",
                         "in the step": "kic, on local disk, resampled in the train step: host",
                         "as before": "as before: on local disk, TF's kernel on the host"}
            print(f"  host CPU an image, disk cache, later epochs: no augmentation {plain:.2f} ms; augmented: "
                  + "; ".join(f"{label} {disk[True, name].later_cpu_ms:.2f} ms "
                              f"({disk[True, name].later_cpu_ms / plain:.1f}x)" for label, name in augmented.items()))
            print(f"  the warp in the train step, XLA on this CPU: {step_warp_ms():.2f} ms an image (on a GPU: "
                  f"the GPU's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="turns taken by the peer and kic's three inputs")
    parser.add_argument("--sizes", default="500x375,1024x768")
    args = parser.parse_args()
    for text in args.sizes.split(","):
        width, height = (int(part) for part in text.split("x"))
        with tempfile.TemporaryDirectory(prefix="kic-bench-input-") as scratch:
            bench_size(scratch, (width, height), args.images, args.epochs, args.rounds)


if __name__ == "__main__":
    main()
