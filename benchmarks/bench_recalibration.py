"""Batch-norm recalibration before each validation: how many training images?

    .venv/bin/python benchmarks/bench_recalibration.py [--images 0,32,128,256,1024] [--seeds 1,2,3] [--epochs 3]
                                                       [--noise-images 16,32,128,256,1024]

The case recalibration exists for: fine-tuning a whole backbone from weights
learned elsewhere, on data whose statistics differ, for a few hundred steps.

1. Pretrain MobileNetV3Small (random init, 64 px) on the demo shapes and keep
   its backbone weights (``save_weights``), as a user's earlier backbone.
2. Fine-tune from those weights on a differently generated dataset (other
   draws of the shapes with their colours inverted: dark backgrounds, other
   hues), batch size 8, once per recalibration size and seed. Size 0 keeps
   Keras' moving averages (momentum 0.999 in MobileNetV3); 32 is what the
   earlier rule, 4 batches, gave at batch size 8; sizes beyond the training
   set use all of it.
3. Print the validation accuracy of the epoch training keeps (the best) and
   of the last epoch: mean and standard deviation over the seeds, and the
   fine-tuning time.
4. The estimate's own noise, apart from training's: one fine-tuned model's
   final weights, its statistics recomputed from N training images drawn in
   5 different orders, validation accuracy mean and spread over the draws,
   and the time one recalibration takes.

Small on purpose (about 15 minutes on 2 cores): 100 images per class. Sizes
beyond the training set (210 images) use all of it; for the estimate's noise
at larger sizes: --images 1024 --seeds 1 --images-per-class 300
--noise-images 32,64,128,256,512,1024 (about 8 minutes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image, ImageOps  # noqa: E402

from kic.config import TrainingConfig  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.demo_data import write_demo_dataset  # noqa: E402
from kic.model import classifier  # noqa: E402
from kic.model.loading import load_keras_model  # noqa: E402
from kic.training import TrainOptions, train  # noqa: E402

BACKBONE, SIZE = "mobilenet_v3_small_100_224", 64


def prepared(root: str, *, seed: int, inverted: bool, images_per_class: int) -> str:
    images = write_demo_dataset(os.path.join(root, "images"), images_per_class=images_per_class, seed=seed)
    if inverted:
        for folder, _, names in os.walk(images):
            for name in names:
                path = os.path.join(folder, name)
                ImageOps.invert(Image.open(path).convert("RGB")).save(path)
    output = os.path.join(root, "prepared")
    prepare_dataset(PrepareOptions(source=images, output_dir=output, validation_fraction=0.3, test_fraction=0.0,
                                   image_short_side=SIZE, workers=1))
    return output


def pretrain(root: str) -> str:
    data = prepared(os.path.join(root, "pretrain"), seed=0, inverted=False, images_per_class=100)
    config = TrainingConfig(epochs=8, batch_size=32, learning_rate=0.002, augmentation=True,
                            augmentation_random_flip="horizontal", augmentation_random_rotation=0.1)
    model_dir = os.path.join(root, "pretrained")
    result = train(data, model_dir, config, TrainOptions(backbone=BACKBONE, pretrained_weights="none",
                                                         image_size=SIZE, seed=0), log=lambda _line: None)
    weights = os.path.join(root, "backbone.weights.h5")
    classifier.backbone_of(load_keras_model(model_dir)).save_weights(weights)
    print(f"pretrained on the demo shapes: val_accuracy {max(result.history['val_accuracy']):.3f}")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="0,32,128,256,1024", help="recalibration sizes to compare")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=100, help="of the fine-tuning data (70%% train)")
    parser.add_argument("--noise-images", default="16,32,128,256,1024", help="sizes for the estimate's own noise")
    args = parser.parse_args()
    sizes = [int(value) for value in args.images.split(",")]
    seeds = [int(value) for value in args.seeds.split(",")]

    with tempfile.TemporaryDirectory(prefix="kic-bench-recalibration-") as root:
        weights = pretrain(root)
        data = prepared(os.path.join(root, "finetune"), seed=7, inverted=True, images_per_class=args.images_per_class)
        config = TrainingConfig(epochs=args.epochs, batch_size=8, learning_rate=0.001)
        print(f"fine-tuning {args.epochs} epochs at batch size 8 on {args.images_per_class * 3} inverted shapes "
              f"(70% train), seeds {seeds}\n")
        print(f"{'recalibration images':>21} {'best val_accuracy':>20} {'last val_accuracy':>20} {'time':>8}")
        for size in sizes:
            best, last, seconds = [], [], []
            for seed in seeds:
                options = TrainOptions(backbone=BACKBONE, pretrained_weights=weights, image_size=SIZE, seed=seed,
                                       recalibration_images=size)
                started = time.perf_counter()
                result = train(data, os.path.join(root, f"model-{size}-{seed}"), config, options,
                               log=lambda _line: None)
                seconds.append(time.perf_counter() - started)
                best.append(max(result.history["val_accuracy"]))
                last.append(result.history["val_accuracy"][-1])
            print(f"{size if size else 'none':>21} {_spread(best):>20} {_spread(last):>20} "
                  f"{statistics.mean(seconds):7.1f}s", flush=True)
        estimate_noise(data, os.path.join(root, f"model-{sizes[-1]}-{seeds[0]}"),
                       [int(value) for value in args.noise_images.split(",")])


def estimate_noise(data_dir: str, model_dir: str, sizes: list[int], draws: int = 5) -> None:
    import keras

    from kic.data import dataset_info, input_pipeline
    from kic.training.batch_norm import Recalibrator

    info = dataset_info.load(data_dir)
    model = load_keras_model(model_dir)
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    recalibrate = Recalibrator(model)

    def batches(split: str, seed: int):
        return input_pipeline.make_dataset(info.shard_paths(data_dir, split), input_pipeline.InputOptions(
            input_pipeline.Images(image_size=SIZE, interpolation="bilinear", num_classes=info.num_classes,
                                  binary_mode=False, num_examples=info.splits[split].num_examples),
            input_pipeline.Reading(batch_size=8),
            input_pipeline.Training(seed=seed) if split == "train" else None))

    warnings.filterwarnings("ignore", message=".*ran out of data.*")  # evaluate() on a finite dataset
    validation = batches("validation", 0)
    training = batches("train", 100)  # reshuffled at each pass, as in training: each pass is another draw
    for _ in training:  # fills the cache, as the first epoch does
        pass
    print(f"\none fine-tuned model, statistics from {draws} draws of the training images (batches of 8)\n")
    print(f"{'recalibration images':>21} {'val_accuracy':>20} {'recalibration':>14}")
    for size in sizes:
        accuracy, seconds = [], []
        for _draw in range(draws):
            started = time.perf_counter()
            recalibrate(training, size)
            seconds.append(time.perf_counter() - started)
            accuracy.append(model.evaluate(validation, verbose=0, return_dict=True)["accuracy"])
        print(f"{size:>21} {_spread(accuracy):>20} {statistics.median(seconds):13.2f}s", flush=True)


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


if __name__ == "__main__":
    main()
