"""Training/serving parity per kind of file: the served answer on the raw file
vs the evaluate path on its prepared record, for several ways of decoding,
resizing and storing.

    .venv/bin/python benchmarks/bench_parity.py [--per-kind 8] [--train-per-kind 15] [--epochs 6] [--workdir DIR]

1. Generates photo-like pictures of the three demo classes (tests/image_fixtures.shape_photo):
   a training source (JPEG, PNG, WebP and EXIF-rotated JPEG) and a test source
   with ``--per-kind`` files per class of every kind in image_fixtures.PARITY_KINDS
   (JPEG 200x150 to 4032x3024, EXIF-rotated in both byte orders, CMYK, grey,
   PNG grey/palette/alpha, WebP).
2. prepare (the short side the pipeline derives), then trains the backbone from
   scratch (this machine has no ImageNet weights) on the prepared data.
3. For each setup, measures with ``kic.serving.parity.measure`` (the exported
   serving signature on the raw files vs the evaluate path on the prepared
   records) and prints top-1 agreement and the largest probability difference
   per kind, and the mean absolute difference of the two 224x224 inputs the
   model sees (in pixel levels, 0..255), which does not depend on the model.

A setup sets how JPEGs are decoded (TensorFlow's fast IDCT or the accurate one
Pillow uses), whether serving applies EXIF orientation, how prepare encodes
what it stores (quality, chroma subsampling), and whether serving first
downscales to the prepared short side as prepare does (ModelInfo.image_short_side).
The model is trained once, on the dataset prepared as before (q95 4:2:0).

``--workdir`` keeps the generated files, the prepared datasets and the model
between runs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from image_fixtures import write_parity_files  # noqa: E402

from kic import artifacts, parameters, storage  # noqa: E402
from kic.config import TrainingConfig  # noqa: E402
from kic.data import dataset_info, images, prepare, schema, sources  # noqa: E402
from kic.data.prepare import PrepareOptions, prepare_dataset  # noqa: E402
from kic.model import loading, model_info, preprocessing  # noqa: E402
from kic.serving import export, parity  # noqa: E402
from kic.training import TrainOptions, train  # noqa: E402

TRAIN_KINDS = ("JPEG", "PNG", "WEBP", "JPEG EXIF-rotated")


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    dct_method: str = "INTEGER_ACCURATE"  # of every JPEG decode in the graph (serving and the evaluate path)
    exif_in_serving: bool = True
    jpeg_quality: int = 95  # what prepare stores
    subsampling: int = 0  # Pillow's: 0 = 4:4:4 (prepare's now), 2 = 4:2:0 (Pillow's default, prepare's before)
    downscale_first: bool = True  # serving downscales to the prepared short side as prepare does (ModelInfo)


SETUPS = (
    Setup("before: fast IDCT, serving ignores EXIF, q95 4:2:0, straight resize", dct_method="INTEGER_FAST",
          exif_in_serving=False, subsampling=2, downscale_first=False),
    Setup("accurate IDCT, EXIF applied (q95 4:2:0, straight resize)", subsampling=2, downscale_first=False),
    Setup("accurate IDCT, EXIF, q95 4:4:4, straight resize", downscale_first=False),
    Setup("accurate IDCT, EXIF, q95 4:2:0, downscale like prepare", subsampling=2),
    Setup("now: accurate IDCT, EXIF, q95 4:4:4, downscale like prepare"),
    Setup("now, but prepare stores q98 4:4:4", jpeg_quality=98),
    Setup("now, but prepare stores q100 4:4:4", jpeg_quality=100),
)


def prepare_with(quality: int, subsampling: int, train_dir: str, test_dir: str, output: str, short_side: int) -> None:
    if os.path.isfile(os.path.join(output, artifacts.DATASET_INFO)):
        return
    original_limits, original_subsampling = PrepareOptions.image_limits, images.JPEG_SUBSAMPLING
    PrepareOptions.image_limits = lambda options: dataclasses.replace(original_limits(options), jpeg_quality=quality)
    images.JPEG_SUBSAMPLING = subsampling
    try:
        prepare_dataset(PrepareOptions(source=train_dir, test_source=test_dir, output_dir=output,
                                       validation_fraction=0.2, image_short_side=short_side, workers=1))
    finally:
        PrepareOptions.image_limits, images.JPEG_SUBSAMPLING = original_limits, original_subsampling


def measure(setup: Setup, model_dir: str, prepared: str, scratch: str):
    """Exports the model as the setup has it and measures parity on the prepared dataset's test split."""
    setup_model = os.path.join(scratch, "model")
    shutil.rmtree(setup_model, ignore_errors=True)
    shutil.copytree(model_dir, setup_model)
    info = model_info.load(model_dir)
    short_side = dataset_info.load(prepared).image_short_side
    model_info.save(setup_model, dataclasses.replace(info, image_short_side=short_side if setup.downscale_first
                                                     else 0))
    saved = (preprocessing.JPEG_DCT_METHOD, preprocessing.exif_orientation)
    preprocessing.JPEG_DCT_METHOD = setup.dct_method
    if not setup.exif_in_serving:  # prepared JPEGs carry no EXIF: this only changes what serving sees
        preprocessing.exif_orientation = lambda encoded: tf.constant(1, tf.int32)
    try:
        package = os.path.join(scratch, "package")
        export.export_model(setup_model, package)
        model, info = loading.load_trained_model(setup_model)
        report = parity.measure(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR), model, info, prepared,
                                max_files=100_000)
        pixel_differences = input_differences(prepared, info)
    finally:
        preprocessing.JPEG_DCT_METHOD, preprocessing.exif_orientation = saved
    return report, pixel_differences


def input_differences(prepared: str, info) -> dict[str, float]:
    """Mean |served input - evaluated input| per kind, in pixel levels."""
    data = dataset_info.load(prepared)
    root = parity.split_source(prepared, data, "test")
    spec = {schema.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
            schema.SOURCE_URI: tf.io.FixedLenFeature([], tf.string)}
    serve = tf.function(lambda encoded: preprocessing.decode_and_resize(encoded, info.image_size,
                                                                        info.interpolation, info.image_short_side))
    evaluate = tf.function(lambda encoded: preprocessing.decode_and_resize(encoded, info.image_size,
                                                                           info.interpolation, data.image_short_side))
    by_kind = collections.defaultdict(list)
    for record in tf.data.TFRecordDataset(data.shard_paths(prepared, "test")).as_numpy_iterator():
        example = tf.io.parse_single_example(record, spec)
        raw = storage.read_bytes(sources.location_of(root, example[schema.SOURCE_URI].numpy().decode()))
        difference = np.abs(serve(tf.constant(raw)).numpy() - evaluate(example[schema.IMAGE_ENCODED]).numpy())
        by_kind[parity.file_kind(raw)].append(float(difference.mean()))
    return {kind: float(np.mean(values)) for kind, values in by_kind.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=8, help="test files per class and kind")
    parser.add_argument("--train-per-kind", type=int, default=15, help="training files per class and kind")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--backbone", default="mobilenet_v3_small_100_224")
    parser.add_argument("--workdir", default="", help="keep files, datasets and the model here between runs")
    parser.add_argument("--setups", default="", help="comma-separated indices into the setups (default: all)")
    args = parser.parse_args()
    prepare.PROGRESS_INTERVAL_S = 1e9

    with tempfile.TemporaryDirectory(prefix="kic-bench-parity-") as scratch:
        work = args.workdir or scratch
        started = time.perf_counter()
        train_dir, test_dir = os.path.join(work, "train"), os.path.join(work, "test")
        if not os.path.isdir(test_dir):
            write_parity_files(train_dir, per_kind=args.train_per_kind, kinds=TRAIN_KINDS, seed=1)
            write_parity_files(test_dir, per_kind=args.per_kind, seed=2)
            print(f"generated the files in {time.perf_counter() - started:.0f}s")
        short_side = parameters.derive_short_side(backbone=args.backbone, image_size=0, requested=0)
        baseline = os.path.join(work, "prepared-95-2")  # what the model trains on: prepare's output before
        prepare_with(95, 2, train_dir, test_dir, baseline, short_side)
        model_dir = os.path.join(work, "model")
        if not os.path.isfile(os.path.join(model_dir, artifacts.KERAS_MODEL)):
            result = train(baseline, model_dir, TrainingConfig(epochs=args.epochs, batch_size=16),
                           TrainOptions(backbone=args.backbone, pretrained_weights="none"), log=lambda line: None)
            print(f"trained {args.backbone} from scratch, {args.epochs} epochs: best val_accuracy "
                  f"{result.best_metrics.get('val_accuracy', float('nan')):.3f}")
        info = model_info.load(model_dir)
        print(f"{info.backbone} at {info.image_size} px, prepared short side {short_side}")

        chosen = [int(index) for index in args.setups.split(",")] if args.setups else range(len(SETUPS))
        for index in chosen:
            setup = SETUPS[index]
            prepared = os.path.join(work, f"prepared-{setup.jpeg_quality}-{setup.subsampling}")
            prepare_with(setup.jpeg_quality, setup.subsampling, train_dir, test_dir, prepared, short_side)
            report, pixels = measure(setup, model_dir, prepared, scratch)
            print(f"\n== [{index}] {setup.name}")
            print(report.summary_lines()[0])
            for kind, summary in report.by_kind().items():
                print(f"  {kind:<22} {summary['files']:>4} files  agreement {summary['top1_agreement']:7.1%}  "
                      f"max |diff| {summary['max_abs_diff']:.4f}  gate's input diff {summary['pixel_mean_diff']:.2f}  "
                      f"mean |input diff| {pixels[kind]:.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
