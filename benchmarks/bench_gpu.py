"""Training images/s on one GPU: the model's ceiling vs kic's real input, augmentation off and on.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 30] [--warmup 10] [--images 2560]
    .venv/bin/python benchmarks/bench_gpu.py --cpu-smoke   # a tiny run that proves it works, on a CPU

MobileNetV2, EfficientNetB0 and ResNet50 at 224, random weights (no
download), global batch 256, Keras mixed precision (mixed_bfloat16) and XLA
(``jit_compile=True``), set here directly. Each model is trained on two inputs
with the same compiled step:

* synthetic: one cached batch repeated (tf.data from a tensor), the ceiling
  an input pipeline can reach: only the host-to-GPU copy remains;
* real: kic's input pipeline (``kic.data.input_pipeline.make_dataset``) over
  kic's prepare output of generated photo-like JPEGs (640x480, stored by
  prepare at the short side the pipeline derives: 256 for 224), decoding every batch
  (``memory_cache_bytes=0``, as for a dataset larger than the cache), which
  is the demanding case: a small dataset is decoded once and then served from
  memory.

Both with augmentation off, and on (flip, rotation 0.2, zoom 0.1) as training
does it on a GPU: the input draws the transforms and the compiled step
resamples (kic.training.augmented); for the real input also as CPU-only
training does it, resampled by the input on the host.

Each figure is a fixed number of steps after a warm-up (tracing, XLA
compilation, the input's threads filling), timed from the end of the warm-up
to the end of training, when Keras has fetched the last step's loss; with it,
the process's CPU time per image over those steps. The target is real >= 90 %
of synthetic ("keeps up"). Then the real input alone, without a model: the
images/s the host can deliver and its CPU ms an image, which is also the
number of cores it needs per 1,000 images/s (1 ms an image at 1,000 a second
is one core). Public A100 anchors (mixed precision and XLA): about 2,400
img/s for ResNet50 and 3,400 img/s for EfficientNetB0.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from kic.data import dataset_info, input_pipeline  # noqa: E402
from kic.data.augmentation import Augmentation  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.parameters import derive_short_side  # noqa: E402
from kic.training.augmented import AugmentInStep  # noqa: E402

MODELS = {
    "MobileNetV2": keras.applications.MobileNetV2,
    "EfficientNetB0": keras.applications.EfficientNetB0,
    "ResNet50": keras.applications.ResNet50,
}
CLASSES = 10
AUGMENTATION = Augmentation(flip="horizontal_and_vertical", rotation=0.2, zoom=0.1)
OFF, IN_STEP, ON_HOST = "off", "in the step", "on the host"


class StepTimer(keras.callbacks.Callback):
    """Seconds, and the process's CPU seconds, from the end of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.started, self.seconds = warmup, None, None
        self.cpu_started, self.cpu_seconds = None, None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.warmup - 1:
            float(logs["loss"])  # waits for the warm-up's last step: the timed steps start on an idle GPU
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started


def build(name: str, size: int, *, smoke: bool, augment: bool) -> keras.Model:
    options = {"alpha": 0.35} if smoke and name == "MobileNetV2" else {}
    backbone = MODELS[name](input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg", **options)
    inputs = keras.Input((size, size, 3))
    features = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    # The logits and the loss in float32: bfloat16 has too few mantissa bits for a softmax's sums.
    outputs = keras.layers.Dense(CLASSES, dtype="float32")(features)
    model = keras.Model(inputs, outputs)
    if augment:  # as training wraps it when it resamples in the step
        model = AugmentInStep(model, AUGMENTATION)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=True)
    return model


def synthetic(batch: int, size: int, augment: str) -> tf.data.Dataset:
    # uint8, as make_dataset hands training batches to the model (which casts them on the device).
    pixels = tf.cast(tf.random.uniform((batch, size, size, 3), 0, 256, tf.int32, seed=0), tf.uint8)
    targets = tf.one_hot(tf.range(batch) % CLASSES, CLASSES)
    if augment == IN_STEP:  # one batch of draws, repeated: the step resamples every time all the same
        pixels = (pixels, AUGMENTATION.draw(batch, tf.constant([1, 2], tf.int64), height=size, width=size))
    return tf.data.Dataset.from_tensors((pixels, targets)).cache().repeat()


def real(prepared: str, batch: int, size: int, augment: str) -> tf.data.Dataset:
    info = dataset_info.load(prepared)
    dataset = input_pipeline.make_dataset(info.shard_paths(prepared, "train"), input_pipeline.InputOptions(
        input_pipeline.Images(image_size=size, interpolation="bilinear", num_classes=info.num_classes,
                              binary_mode=False, num_examples=info.splits["train"].num_examples,
                              short_side=info.image_short_side),
        input_pipeline.Reading(batch_size=batch, memory_cache_bytes=0, deterministic=False),
        input_pipeline.Training(augmentation=None if augment == OFF else AUGMENTATION,
                                augment_in_step=augment == IN_STEP)))
    # Full batches only, of the synthetic input's static shape: the step compiled for it serves this input too
    # (the last, smaller batch of each pass would be a new shape for XLA to compile).
    full = dataset.repeat().filter(lambda inputs, _target: tf.shape(tf.nest.flatten(inputs)[0])[0] == batch)
    return full.map(lambda inputs, target: (
        tf.nest.map_structure(lambda part: tf.ensure_shape(part, [batch, *part.shape[1:]]), inputs),
        tf.ensure_shape(target, (batch, info.num_classes))))


def input_alone(dataset: tf.data.Dataset, *, batch: int, warmup: int, steps: int) -> tuple[float, float]:
    """The input's images/s and CPU ms an image without a model: what the host can feed, and at what cost."""
    batches = iter(dataset)
    for _ in range(warmup):
        next(batches)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(batches)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return steps * batch / seconds, 1000 * cpu_seconds / (steps * batch)


def images_per_second(model: keras.Model, dataset: tf.data.Dataset, *, batch: int, warmup: int,
                      steps: int) -> tuple[float, float]:
    """Training images/s and the process's CPU ms an image."""
    timer = StepTimer(warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], shuffle=False, verbose=0)
    return steps * batch / timer.seconds, 1000 * timer.cpu_seconds / (steps * batch)


def prepared_photos(folder: str, images: int, size: int, *, photo_size: tuple[int, int], workers: int) -> str:
    """kic's prepare output of generated photo-like JPEGs, stored to the short side the pipeline derives."""
    source, prepared = os.path.join(folder, "images"), os.path.join(folder, "prepared")
    width, height = photo_size
    rng = np.random.default_rng(0)
    # bench_prepare's photo-like images (colour gradients and sensor-like noise), with the noise drawn once
    # and cropped at random, which makes thousands of them in seconds.
    noise = rng.normal(0, 12, size=(2 * height, 2 * width, 3)).astype(np.float32)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    for index in range(images):
        colours = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
        top, left = rng.integers(0, height), rng.integers(0, width)
        pixels = (colours[0] * (1 - x) * (1 - y) + colours[1] * x + colours[2] * y * (1 - x)
                  + noise[top:top + height, left:left + width])
        path = os.path.join(source, f"class_{index % CLASSES}", f"{index:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    short_side = derive_short_side(backbone="", image_size=size, requested=0)
    # Shards of 256 images, as a large dataset has many: the reads interleave over several files.
    prepare_dataset(PrepareOptions(source=source, output_dir=prepared, validation_fraction=0.05,
                                   test_fraction=0.0, image_short_side=short_side, images_per_shard=256,
                                   workers=workers))
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model and input")
    parser.add_argument("--images", type=int, default=2560, help="photos prepared for the real input")
    parser.add_argument("--cpu-smoke", "--smoke", dest="smoke", action="store_true",
                        help="MobileNetV2 (alpha 0.35) at 64, batch 8, 3 steps: proves the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.size, args.batch, args.warmup, args.steps, args.images = "MobileNetV2", 64, 8, 2, 3, 64

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    started = time.perf_counter()
    devices = [device.name for device in tf.config.list_logical_devices("GPU")] or ["CPU only"]
    with tempfile.TemporaryDirectory(prefix="kic-bench-gpu-") as scratch:
        prepared = prepared_photos(scratch, args.images, args.size,
                                   photo_size=(160, 120) if args.smoke else (640, 480),
                                   workers=1 if args.smoke else 0)
        print(f"{', '.join(devices)}; {os.cpu_count()} cores; {args.size}x{args.size}, global batch {args.batch}, "
              f"mixed_bfloat16 + XLA; {args.warmup} warm-up + {args.steps} timed steps; real input: "
              f"{args.images} photos prepared in {time.perf_counter() - started:.0f}s, decoded every batch; "
              f"augmentation: {AUGMENTATION}")
        print(f"\n{'model':16} {'augmentation':13} {'synthetic img/s':>16} {'real img/s':>11} {'real/synthetic':>15}"
              f"   CPU ms an image (synthetic, real)")
        for name in args.models.split(","):
            for augment in (OFF, IN_STEP, ON_HOST):
                # Resampled on the host, the model is the plain one, fed float16 images by the input.
                model = build(name, args.size, smoke=args.smoke, augment=augment == IN_STEP)
                ceiling, ceiling_cpu = images_per_second(model, synthetic(args.batch, args.size, augment),
                                                         batch=args.batch, warmup=args.warmup, steps=args.steps)
                measured, measured_cpu = images_per_second(model, real(prepared, args.batch, args.size, augment),
                                                           batch=args.batch, warmup=args.warmup, steps=args.steps)
                verdict = "keeps up" if measured >= 0.9 * ceiling else "does not keep up (below 90%)"
                print(f"{name:16} {augment:13} {ceiling:16.0f} {measured:11.0f} {measured / ceiling:14.0%}"
                      f"   {ceiling_cpu:6.2f} {measured_cpu:6.2f}   input {verdict}", flush=True)
                keras.backend.clear_session()
        print(f"\nthe real input alone (no model), {os.cpu_count()} cores: images/s, and host CPU ms an image "
              f"= cores per 1,000 images/s")
        for augment in (OFF, IN_STEP, ON_HOST):
            rate, cpu_ms = input_alone(real(prepared, args.batch, args.size, augment), batch=args.batch,
                                       warmup=args.warmup, steps=args.steps)
            print(f"  augmentation {augment:13} {rate:8.0f} img/s   {cpu_ms:5.2f} ms an image", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
