"""Training speed: kic's training epoch vs what a user writes by hand.

    .venv/bin/python benchmarks/bench_train.py [--images 256] [--size 1024x768] [--epochs 3]

On the same generated photo-like JPEGs and the same backbone (MobileNetV3Small
at 224, random weights: no download), it times a training epoch with
validation: kic's train() vs the plain Keras script (directory dataset +
model.fit with a 10% validation subset). The input pipeline alone, on several
image shapes and dataset sizes, is bench_input.py's.

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
from kic.data import dataset_info  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.training import TrainOptions, train  # noqa: E402

SIZE, BATCH = 224, 32


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
    parser.add_argument("--short-side", type=int, default=224,
                        help="prepare's image_short_side: the pipeline derives 224 for a 224 model; 600 is prepare's "
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

        plain, plain_validation = plain_directory_datasets(images_dir)
        n_plain = sum(int(batch[0].shape[0]) for batch in plain)
        print(f"{args.images} images 1024x768 JPEG, {args.classes} classes, {os.cpu_count()} cores; "
              f"prepare to short side {args.short_side} (once per dataset): {prepare_seconds:.1f}s")
        print(f"\ntraining, images/s {'epoch 1':>30} {'later epochs':>12}")
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
