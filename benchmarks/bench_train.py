"""Training speed: kic's input pipeline and training epoch vs what a user writes by hand.

    .venv/bin/python benchmarks/bench_train.py [--images 256] [--size 1024x768] [--epochs 3]

On the same generated photo-like JPEGs and the same backbone (MobileNetV3Small
at 224, random weights: no download), it times

(a) the input pipeline alone, one pass per epoch:
    kic:   prepare's TFRecords -> make_dataset (parallel interleave/decode, cache);
    plain: keras.utils.image_dataset_from_directory on the original files;
(b) a training epoch with validation: kic's train() vs the plain Keras script
    (directory dataset + model.fit with a 10% validation subset).

Epoch 1 includes tracing and cache filling; the later epochs are the steady
state a longer run lives in. prepare's own time is printed separately: it is
paid once per dataset, not per epoch or per training run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_prepare import generate  # noqa: E402

from kic.config import TrainingConfig  # noqa: E402
from kic.data import dataset_info, input_pipeline  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.training import TrainOptions, train  # noqa: E402

SIZE, BATCH = 224, 32


def timed_passes(dataset: tf.data.Dataset, epochs: int) -> list[float]:
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _batch in dataset:
            pass
        seconds.append(time.perf_counter() - started)
    return seconds


def plain_directory_datasets(folder: str) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """What the keras-io examples do: 90% training, 10% validation."""
    return keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE), batch_size=BATCH,
                                                    label_mode="categorical", seed=0, verbose=False,
                                                    validation_split=0.1, subset="both")


def plain_model(num_classes: int) -> keras.Model:
    backbone = keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None,
                                                   pooling="avg")
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(num_classes)(keras.layers.Dropout(0.2)(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = [*getattr(self, "seconds", []), time.perf_counter() - self.started]


def row(name: str, images: int, seconds: list[float]) -> str:
    steady = seconds[1:] or seconds
    return (f"{name:44} {images / seconds[0]:9.1f} {images / (sum(steady) / len(steady)):12.1f}"
            f"   ({', '.join(f'{s:.1f}s' for s in seconds)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--short-side", type=int, default=256,
                        help="prepare's image_short_side: the pipeline derives 256 for a 224 model; 600 is prepare's "
                             "standalone default, sized for the largest backbone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kic-bench-train-") as scratch:
        images_dir, prepared = os.path.join(scratch, "images"), os.path.join(scratch, "prepared")
        generate(images_dir, args.images, args.classes)
        started = time.perf_counter()
        prepare_dataset(PrepareOptions(source=images_dir, output_dir=prepared, validation_fraction=0.1,
                                       test_fraction=0.0, image_short_side=args.short_side))
        prepare_seconds = time.perf_counter() - started
        info = dataset_info.load(prepared)
        n_train = info.splits["train"].num_examples

        budget = input_pipeline.CACHE_BUDGET_BYTES
        ours = input_pipeline.make_dataset(
            info.shard_paths(prepared, "train"), image_size=SIZE, interpolation="bilinear", batch_size=BATCH,
            num_classes=info.num_classes, binary_mode=False, training=True, num_examples=n_train)
        plain, plain_validation = plain_directory_datasets(images_dir)
        n_plain = sum(int(batch[0].shape[0]) for batch in plain)
        print(f"{args.images} images 1024x768 JPEG, {args.classes} classes, {os.cpu_count()} cores; "
              f"prepare to short side {args.short_side} (once per dataset): {prepare_seconds:.1f}s")
        print(f"\n(a) input pipeline, images/s {'epoch 1':>26} {'later epochs':>12}")
        print(row("kic: TFRecords + make_dataset", n_train, timed_passes(ours, args.epochs)))
        # A dataset beyond the in-memory cache budget decodes every epoch.
        input_pipeline.CACHE_BUDGET_BYTES = 0
        uncached = input_pipeline.make_dataset(
            info.shard_paths(prepared, "train"), image_size=SIZE, interpolation="bilinear", batch_size=BATCH,
            num_classes=info.num_classes, binary_mode=False, training=True, num_examples=n_train)
        print(row("kic: the same, too big to cache", n_train, timed_passes(uncached, args.epochs)))
        input_pipeline.CACHE_BUDGET_BYTES = budget
        print(row("plain: image_dataset_from_directory", n_plain, timed_passes(plain, args.epochs)))

        print(f"\n(b) training, images/s {'epoch 1':>30} {'later epochs':>12}")
        lines: list[str] = []
        config = TrainingConfig(epochs=args.epochs, batch_size=BATCH)
        train(prepared, os.path.join(scratch, "model"), config,
              TrainOptions(backbone="mobilenet_v3_small_100_224", pretrained_weights="none", image_size=SIZE),
              log=lines.append)
        kic_seconds = [float(line.rsplit(" - ", 1)[1].rstrip("s")) for line in lines if line.startswith("Epoch ")]
        print(row("kic: train() (incl. validation)", n_train, kic_seconds))
        timer = EpochTimes()
        plain_model(args.classes).fit(plain, validation_data=plain_validation, epochs=args.epochs, callbacks=[timer],
                                      verbose=0)
        print(row("plain: directory dataset + model.fit", n_plain, timer.seconds))


if __name__ == "__main__":
    main()
