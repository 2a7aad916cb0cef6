"""Serving speed of an exported package: SavedModel signature vs TFLite.

    .venv/bin/python benchmarks/bench_serving.py [--calls 50] [--batch 32] [--backbones a,b]

For each backbone (default: the CPU demo backbone and the default backbone)
a classifier with random weights (``weights="none"``: the benchmark machine has
no network, and speed does not depend on weight values) is saved as a trained
model directory and exported with ``kic.serving.export.export_model`` (float32 TFLite).
Then:

* SavedModel: ``serving_default`` on 640x480 JPEG bytes, so JPEG decode and
  resize are included, as in TF Serving; latency at batch 1 (median and p90
  over ``--calls`` calls, after warm-up) and throughput at batch ``--batch``.
* TFLite (float32, and int8 dynamic range): on already decoded 224x224 pixels
  (TFLite has no decode op), batch fixed at 1; latency per image, and
  throughput as ``--batch`` back-to-back invocations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kic import artifacts, parameters  # noqa: E402
from kic.model import backbone_registry, backbones, model_info  # noqa: E402
from kic.model.model_info import ModelInfo  # noqa: E402
from kic.serving import contract, export, tflite  # noqa: E402

NUM_CLASSES = 5


def build_model_dir(backbone_name: str, directory: str) -> ModelInfo:
    import keras

    backbone = backbone_registry.resolve(backbone_name)
    extractor = backbones.build_feature_extractor(backbone, weights="none")
    size = backbone.input_size
    pixels = keras.Input((size, size, 3), name="pixels")
    logits = keras.layers.Dense(NUM_CLASSES)(keras.layers.Dropout(0.2)(extractor(pixels)))
    os.makedirs(directory, exist_ok=True)
    keras.Model(pixels, logits).save(os.path.join(directory, artifacts.KERAS_MODEL))
    # The short side a pipeline run prepares images at: serving downscales to it first, as prepare did.
    short_side = parameters.derive_short_side(backbone=backbone.name, image_size=size, requested=0)
    info = ModelInfo(backbone=backbone.name, image_size=size, interpolation="bilinear",
                     class_names=tuple(f"class_{index}" for index in range(NUM_CLASSES)), binary_mode=False,
                     image_short_side=short_side)
    model_info.save(directory, info)
    return info


def photo_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([x * 255 / 640, y * 255 / 480, np.full_like(x, 128)], axis=-1)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image, quality=90).numpy()


def timed(function, calls: int) -> list[float]:
    function()  # warm-up: tracing, allocation
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_saved_model(package: str, calls: int, batch: int) -> dict[str, float]:
    serve = tf.saved_model.load(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR)).signatures[
        contract.SIGNATURE_NAME]
    one = tf.constant([photo_jpeg(0)])
    many = tf.constant([photo_jpeg(seed) for seed in range(batch)])
    latency = timed(lambda: serve(image_bytes=one)["probabilities"].numpy(), calls)
    batched = timed(lambda: serve(image_bytes=many)["probabilities"].numpy(), max(3, calls // 10))
    return {"p50_ms": 1000 * statistics.median(latency), "p90_ms": 1000 * percentile(latency, 90),
            "images_per_s": batch / statistics.median(batched)}


def bench_tflite(flatbuffer: bytes, size: int, calls: int, batch: int) -> dict[str, float]:
    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    pixels = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)

    def once() -> None:
        interpreter.set_tensor(input_index, pixels)
        interpreter.invoke()
        interpreter.get_tensor(output_index)

    def many() -> None:
        for _ in range(batch):
            once()

    latency = timed(once, calls)
    batched = timed(many, max(3, calls // 10))
    return {"p50_ms": 1000 * statistics.median(latency), "p90_ms": 1000 * percentile(latency, 90),
            "images_per_s": batch / statistics.median(batched)}


def bench_backbone(name: str, calls: int, batch: int,
                   scratch: str) -> list[tuple[str, str, dict[str, float]]]:
    model_dir = os.path.join(scratch, name, "model")
    info = build_model_dir(name, model_dir)
    start = time.perf_counter()
    result = export.export_model(model_dir, os.path.join(scratch, name, "package"),
                                 export.ExportOptions(tflite="float32"))
    export_s = time.perf_counter() - start
    print(f"{name}: export with float32 TFLite took {export_s:.1f} s; SavedModel max abs diff "
          f"{result.max_abs_diff:.2g}, TFLite {result.tflite_max_abs_diff:.2g}", flush=True)
    rows = [(name, "SavedModel (bytes in)", bench_saved_model(result.package_dir, calls, batch))]
    with open(os.path.join(result.package_dir, artifacts.TFLITE_MODEL), "rb") as handle:
        float32 = handle.read()
    rows.append((name, "TFLite float32 (pixels in)", bench_tflite(float32, info.image_size, calls, batch)))
    saved_model_dir = os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR)
    int8 = tflite.convert(saved_model_dir, "int8")
    rows.append((name, "TFLite int8-dr (pixels in)", bench_tflite(int8, info.image_size, calls, batch)))
    for label, flatbuffer in (("float32", float32), ("int8-dr", int8)):
        print(f"  TFLite {label}: {len(flatbuffer) / 1e6:.1f} MB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backbones",
                        default=f"{backbone_registry.CPU_DEMO_BACKBONE},{backbone_registry.DEFAULT_BACKBONE}")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; random weights (weights='none', no network)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kic-bench-serving-") as scratch:
        for name in args.backbones.split(","):
            rows.extend(bench_backbone(name.strip(), args.calls, args.batch, scratch))
    print()
    print(f"| backbone | runtime | batch-1 p50 ms | batch-1 p90 ms | batch-{args.batch} images/s |")
    print("|---|---|---:|---:|---:|")
    for name, runtime, figures in rows:
        print(f"| {name} | {runtime} | {figures['p50_ms']:.1f} | {figures['p90_ms']:.1f} | "
              f"{figures['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
