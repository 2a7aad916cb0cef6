"""TFLite export of the ``pixels`` signature, with a parity report.

TFLite has no image-decode ops, so the TFLite model's input is already-decoded
pixels, float32 [1, image_size, image_size, 3] in [0, 255] (batch resizable),
made as ``kic.model.preprocessing.decode_and_resize`` makes them; its output
is ``probabilities`` as the serving signature returns them ([batch, 1], the
positive class's, in binary mode).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from kic import artifacts, storage
from kic.model import loading
from kic.model.model_info import ModelInfo
from kic.serving import contract
from kic.serving.contract import PIXELS_SIGNATURE_NAME
from kic.serving.verify import ExportVerificationError, max_difference

# TFLite kernels differ from TF's; float16 weights lose ~3 decimal digits.
# Dynamic-range int8 has no gate: its parity report is for a human to judge.
TOLERANCES: dict[str, float | None] = {"float32": 1e-4, "float16": 1e-2, "int8": None}


def convert(saved_model_dir: str, quantization: str) -> bytes:
    """Converts the exported SavedModel's pixels signature: float32 pixels
    [batch, size, size, 3] (batch 1 unless resized) -> probabilities [batch, K] ([batch, 1] in binary mode)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[PIXELS_SIGNATURE_NAME])
    if quantization in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def probabilities(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
    """Runs a TFLite model image by image (its batch dimension is fixed at 1)."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for image in pixels:
        interpreter.set_tensor(input_index, image[np.newaxis].astype(np.float32))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(outputs)


def export(package: str, info: ModelInfo, quantization: str, pixels: np.ndarray,
           reference: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Writes ``model.tflite`` and its parity report into ``package`` (which
    holds the SavedModel); ``reference`` is the Keras model's probabilities on
    ``pixels``. Returns the largest difference and the model-info entry."""
    flatbuffer = convert(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR), quantization)
    lite = probabilities(flatbuffer, pixels)
    max_difference(lite, reference, f"the {quantization} TFLite model")
    difference = np.abs(lite - reference)
    tolerance = TOLERANCES[quantization]
    lite_top1, reference_top1 = (loading.class_scores(answer, info.binary_mode).numpy().argmax(axis=1)
                                 for answer in (lite, reference))
    report = {
        "quantization": quantization if quantization != "int8" else "int8 (dynamic range)",
        "tolerance": tolerance,
        "num_samples": len(pixels),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "top1_agreement": float(np.mean(lite_top1 == reference_top1)),
        "passed": tolerance is None or bool(difference.max() <= tolerance),
        "compared_with": "the Keras model's probabilities on the same decoded pixels",
    }
    storage.write_text(os.path.join(package, artifacts.TFLITE_PARITY_REPORT), json.dumps(report, indent=2))
    if not report["passed"]:
        raise ExportVerificationError(
            f"the {quantization} TFLite model's probabilities differ from the Keras model's by up to "
            f"{report['max_abs_diff']:.3g} (allowed {tolerance:g}); see {artifacts.TFLITE_PARITY_REPORT}")
    storage.write_bytes(os.path.join(package, artifacts.TFLITE_MODEL), flatbuffer)
    details = {
        "file": artifacts.TFLITE_MODEL,
        "quantization": report["quantization"],
        "input": f"float32 [1, {info.image_size}, {info.image_size}, 3] RGB pixels in [0, 255] (batch "
                 f"resizable), decoded and resized ({info.interpolation}) like "
                 "kic.model.preprocessing.decode_and_resize",
        "output": contract.describe_outputs(info.class_names, info.binary_mode, 1)["probabilities"],
        "parity": {key: report[key] for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement")},
    }
    return report["max_abs_diff"], details
