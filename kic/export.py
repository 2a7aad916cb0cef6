"""Turns a trained model directory into a serving package.

The package (``output_dir``) holds:

* ``1/``: a SavedModel whose ``serving_default`` signature takes a 1-D string
  tensor ``image_bytes`` of raw encoded images (JPEG, PNG, GIF, BMP, WebP) and
  decodes and resizes them in the graph with ``kic.model.preprocessing`` (the
  path training used), so serving cannot drift from training;
* ``1/assets.extra/tf_serving_warmup_requests``: TF Serving warm-up records;
* the label map and a model-info JSON (ModelInfo plus package details);
* ``model.tar.gz``: ``1/``, label map, model info and labels.txt at the archive
  root (the reference algorithm's layout);
* optionally ``model.tflite``: TFLite has no image-decode ops, so its input is
  already-decoded pixels, float32 [1, image_size, image_size, 3] in [0, 255]
  (batch resizable), made as ``preprocessing.decode_and_resize`` makes them;
  its output is probabilities. The SavedModel has the same pixels-in path as
  its second signature, ``pixels``.

Every export is verified: the SavedModel is reloaded and must match the Keras
model's probabilities on the same pixels (and so must the TFLite model, within
a looser tolerance), or ``ExportVerificationError`` fails the step.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf

from kic import artifacts, storage
from kic.model import loading, model_info, preprocessing
from kic.model.model_info import ModelInfo

PACKAGE_VERSION = 1
SIGNATURE_NAME = "serving_default"
# A second signature on decoded pixels, for clients that decode themselves and
# as the TFLite converter's input.
PIXELS_SIGNATURE_NAME = "pixels"
PIXELS_INPUT_NAME = "pixels"
INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probabilities", "predicted_label", "predicted_index", "top_k_labels", "top_k_scores")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
TFLITE_MODEL = "model.tflite"
TFLITE_PARITY_REPORT = "tflite_parity.json"
# The reference algorithm's archive layout (plus labels.txt).
TARBALL_MEMBERS = (artifacts.SAVED_MODEL_VERSION_DIR, artifacts.LABEL_MAP, artifacts.MODEL_INFO,
                   artifacts.LABELS_TXT, artifacts.KERAS_MODEL)

# Max abs difference of probabilities allowed between the reloaded SavedModel
# and the in-memory Keras model (same pixels, same float32 maths).
SAVED_MODEL_TOLERANCE = 1e-5
# TFLite kernels differ from TF's; float16 weights lose ~3 decimal digits.
# Dynamic-range int8 has no gate: its parity report is for a human to judge.
TFLITE_TOLERANCES: dict[str, float | None] = {"float32": 1e-4, "float16": 1e-2, "int8": None}


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the trained model's predictions."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    destination_uri: str = ""
    tflite: str = ""
    top_k: int = 5
    evaluation_metrics: dict | None = None

    def __post_init__(self) -> None:
        if self.tflite not in ("", *TFLITE_TOLERANCES):
            raise ValueError(f"tflite must be '', {', '.join(TFLITE_TOLERANCES)}; got {self.tflite!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    package_dir: str
    tarball: str
    max_abs_diff: float
    tflite_max_abs_diff: float | None


def export_model(model_dir: str, output_dir: str, options: ExportOptions = ExportOptions(),
                 sample_images: list[bytes] | None = None) -> ExportResult:
    """Writes and verifies the serving package of the model in ``model_dir``.

    ``sample_images`` (encoded bytes) are used for verification and warm-up;
    a few generated JPEGs are used when none are given.
    """
    model, info = load_trained_model(model_dir)
    samples = list(sample_images) if sample_images else generated_sample_images()
    reference = _keras_probabilities(model, info, samples)

    with tempfile.TemporaryDirectory(prefix="kic-export-") as scratch:
        package = output_dir if not storage.is_gcs(output_dir) else os.path.join(scratch, "package")
        _clear_previous_export(package)
        version_dir = os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR)
        module = ServingModule(model, info, options.top_k)
        tf.saved_model.save(module, version_dir, signatures={SIGNATURE_NAME: module.serve,
                                                             PIXELS_SIGNATURE_NAME: module.serve_pixels})
        write_warmup_requests(os.path.join(version_dir, WARMUP_FILE), samples[:1])
        max_abs_diff = _verify_saved_model(version_dir, samples, reference)

        tflite_diff = None
        tflite_details = None
        if options.tflite:
            tflite_diff, tflite_details = _export_tflite(model, info, options.tflite, samples, package)

        storage.write_text(os.path.join(package, artifacts.MODEL_INFO),
                           _package_info_json(info, options, tflite_details))
        storage.write_text(os.path.join(package, artifacts.LABEL_MAP),
                           json.dumps(info.label_map(), indent=2, ensure_ascii=False))
        storage.write_text(os.path.join(package, artifacts.LABELS_TXT), "\n".join(info.class_names) + "\n")
        # The Keras model travels too: a package can then be the starting point of
        # incremental training, or the baseline of a later quality gate.
        storage.copy_file(storage.join(model_dir, artifacts.KERAS_MODEL), os.path.join(package, artifacts.KERAS_MODEL))
        _write_tarball(package, os.path.join(package, artifacts.MODEL_TARBALL))

        if storage.is_gcs(output_dir):
            publish(package, output_dir)
        if options.destination_uri:
            publish(package, options.destination_uri)
        storage.write_text(os.path.join(package, artifacts.SUCCESS_MARKER), "")

    return ExportResult(package_dir=output_dir, tarball=storage.join(output_dir, artifacts.MODEL_TARBALL),
                        max_abs_diff=max_abs_diff, tflite_max_abs_diff=tflite_diff)


# --- Loading the trained model ---------------------------------------------

def load_trained_model(model_dir: str):
    """Returns (keras.Model, ModelInfo) of a trained model directory (local or gs://)."""
    info = model_info.load(model_dir)
    model_uri = storage.join(model_dir, artifacts.KERAS_MODEL)
    if not storage.exists(model_uri):
        raise FileNotFoundError(f"{model_uri} not found: {model_dir} is not a trained model directory")
    with storage.local_copy(model_uri) as local:
        model = loading.load_keras_model(os.path.dirname(local))
    expected = (info.image_size, info.image_size, 3)
    if tuple(model.input_shape[1:]) != expected:
        raise ValueError(f"{model_dir}: the model takes inputs of shape {model.input_shape[1:]}, but its "
                         f"{artifacts.MODEL_INFO} says image_size {info.image_size}, i.e. {expected}")
    return model, info


# --- The serving signature ---------------------------------------------------

class ServingModule(tf.Module):
    """The trained Keras model wrapped with decode, resize and label lookup."""

    def __init__(self, model, info: ModelInfo, top_k: int) -> None:
        super().__init__(name="kic_serving")
        self.model = model
        # Keras 3 variables reach the SavedModel only through the Keras objects;
        # without tracking the underlying tf.Variables here, TF Serving's loader
        # (and the TFLite converter) cannot find them although
        # tf.saved_model.load can.
        self.model_variables = [variable.value for variable in model.variables]
        self.image_size = info.image_size
        self.interpolation = info.interpolation
        self.binary_mode = info.binary_mode
        self.top_k = min(top_k, info.num_classes)
        # A variable so that the loaded SavedModel still knows its labels.
        self.class_names = tf.Variable(list(info.class_names), dtype=tf.string, trainable=False,
                                       name="class_names")
        pixels_spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32,
                                    name=PIXELS_INPUT_NAME)
        self.serve_pixels = tf.function(self._pixels_outputs, input_signature=[pixels_spec])

    def probabilities_from_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
        return loading.logits_to_probabilities(self.model(pixels, training=False), self.binary_mode)

    def _pixels_outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self.probabilities_from_pixels(pixels)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size
        pixels = tf.map_fn(
            lambda encoded: preprocessing.decode_and_resize(encoded, size, self.interpolation),
            image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        probabilities = self.probabilities_from_pixels(pixels)
        scores, indices = tf.math.top_k(probabilities, k=self.top_k)
        predicted_index = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "predicted_index": predicted_index,
            "predicted_label": tf.gather(self.class_names, predicted_index),
            "top_k_scores": scores,
            "top_k_labels": tf.gather(self.class_names, indices),
        }


# --- Verification ------------------------------------------------------------

def generated_sample_images(count: int = 4) -> list[bytes]:
    """Deterministic JPEGs of assorted sizes with structure (not flat colour)."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        height, width = 96 + 40 * index, 128 + 24 * index
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        images.append(tf.io.encode_jpeg(noisy, quality=90).numpy())
    return images


def decoded_pixels(samples: list[bytes], info: ModelInfo) -> np.ndarray:
    """The pixels the serving signature feeds the model: [n, size, size, 3] float32."""
    return np.stack([preprocessing.decode_and_resize(tf.constant(raw), info.image_size, info.interpolation)
                     .numpy() for raw in samples])


def _keras_probabilities(model, info: ModelInfo, samples: list[bytes]) -> np.ndarray:
    try:
        pixels = decoded_pixels(samples, info)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"a sample image for export verification cannot be decoded: {error.message}") from None
    return loading.logits_to_probabilities(model(pixels, training=False), info.binary_mode).numpy()


def _verify_saved_model(version_dir: str, samples: list[bytes], reference: np.ndarray) -> float:
    """Compares the SavedModel as TF2 loads it and as TF Serving does (a TF1
    session restoring the variables from the checkpoint) with ``reference``."""
    serve = tf.saved_model.load(version_dir).signatures[SIGNATURE_NAME]
    loaded = serve(**{INPUT_NAME: tf.constant(samples)})["probabilities"].numpy()
    max_abs_diff = max(float(np.max(np.abs(loaded - reference))),
                       float(np.max(np.abs(_session_probabilities(version_dir, samples) - reference))))
    if not max_abs_diff <= SAVED_MODEL_TOLERANCE:
        raise ExportVerificationError(
            f"the exported SavedModel's probabilities differ from the trained Keras model's by up to "
            f"{max_abs_diff:.3g} on {len(samples)} sample images (allowed {SAVED_MODEL_TOLERANCE:g})")
    return max_abs_diff


def _session_probabilities(version_dir: str, samples: list[bytes]) -> np.ndarray:
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
            signature = meta_graph.signature_def[SIGNATURE_NAME]
            return session.run(signature.outputs["probabilities"].name,
                               {signature.inputs[INPUT_NAME].name: samples})
        except tf.errors.OpError as error:
            raise ExportVerificationError(
                f"the exported SavedModel does not run as TF Serving loads it: {error.message}") from None


# --- TFLite ------------------------------------------------------------------

def convert_to_tflite(saved_model_dir: str, quantization: str) -> bytes:
    """Converts the exported SavedModel's pixels signature: float32 pixels
    [batch, size, size, 3] (batch 1 unless resized) -> probabilities [batch, K]."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[PIXELS_SIGNATURE_NAME])
    if quantization in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tflite_probabilities(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
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


def _export_tflite(model, info: ModelInfo, quantization: str, samples: list[bytes],
                   package: str) -> tuple[float, dict[str, Any]]:
    flatbuffer = convert_to_tflite(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR), quantization)
    pixels = decoded_pixels(samples, info)
    reference = loading.logits_to_probabilities(model(pixels, training=False), info.binary_mode).numpy()
    lite = tflite_probabilities(flatbuffer, pixels)
    difference = np.abs(lite - reference)
    tolerance = TFLITE_TOLERANCES[quantization]
    report = {
        "quantization": quantization if quantization != "int8" else "int8 (dynamic range)",
        "tolerance": tolerance,
        "num_samples": len(samples),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "top1_agreement": float(np.mean(lite.argmax(axis=1) == reference.argmax(axis=1))),
        "passed": tolerance is None or bool(difference.max() <= tolerance),
        "compared_with": "the Keras model's probabilities on the same decoded pixels",
    }
    storage.write_text(os.path.join(package, TFLITE_PARITY_REPORT), json.dumps(report, indent=2))
    if not report["passed"]:
        raise ExportVerificationError(
            f"the {quantization} TFLite model's probabilities differ from the Keras model's by up to "
            f"{report['max_abs_diff']:.3g} (allowed {tolerance:g}); see {TFLITE_PARITY_REPORT}")
    storage.write_bytes(os.path.join(package, TFLITE_MODEL), flatbuffer)
    details = {
        "file": TFLITE_MODEL,
        "quantization": report["quantization"],
        "input": f"float32 [1, {info.image_size}, {info.image_size}, 3] RGB pixels in [0, 255] (batch "
                 f"resizable), decoded and resized ({info.interpolation}) like "
                 "kic.model.preprocessing.decode_and_resize",
        "output": f"float32 [batch, {info.num_classes}] probabilities in label-map order",
        "parity": {key: report[key] for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement")},
    }
    return report["max_abs_diff"], details


# --- TF Serving warm-up --------------------------------------------------------
# A warm-up file is a TFRecord of tensorflow.serving.PredictionLog protos. The
# few fields needed are encoded by hand so that export does not depend on the
# tensorflow-serving-api package (which pins the TensorFlow version); field
# numbers are from tensorflow_serving/apis/{prediction_log,predict,model}.proto.

def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log_bytes(images: list[bytes]) -> bytes:
    """A serialised PredictionLog holding one Predict request for ``images``."""
    tensor = tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]).SerializeToString()
    model_spec = _length_delimited(3, SIGNATURE_NAME.encode())               # ModelSpec.signature_name
    inputs_entry = _length_delimited(1, INPUT_NAME.encode()) + _length_delimited(2, tensor)
    request = _length_delimited(1, model_spec) + _length_delimited(2, inputs_entry)  # PredictRequest
    predict_log = _length_delimited(1, request)                                # PredictLog.request
    return _length_delimited(6, predict_log)                                   # PredictionLog.predict_log


def write_warmup_requests(path: str, images: list[bytes]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(prediction_log_bytes(images))


# --- Package files -------------------------------------------------------------

def _package_info_json(info: ModelInfo, options: ExportOptions, tflite: dict[str, Any] | None) -> str:
    payload = json.loads(info.to_json())
    payload.update({
        "output": "the SavedModel and TFLite model return probabilities per class ([1-p, p] in binary mode)",
        "package_version": PACKAGE_VERSION,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "evaluation_metrics": options.evaluation_metrics or {},
        "preprocessing": {
            "decode": "JPEG, PNG, GIF (first frame), BMP, WebP to RGB; transparent pixels composited on white "
                      "as in prepare; EXIF orientation is not applied (send upright images)",
            "resize": f"{info.image_size}x{info.image_size}, {info.interpolation}, aspect ratio not kept, "
                      "clipped to [0, 255]",
            "function": "kic.model.preprocessing.decode_and_resize",
            "pixel_scaling": "inside the model",
        },
        "serving": {
            "saved_model_dir": artifacts.SAVED_MODEL_VERSION_DIR,
            "signature": SIGNATURE_NAME,
            "input": f"{INPUT_NAME}: string [batch], raw encoded image bytes",
            "pixels_signature": f"{PIXELS_SIGNATURE_NAME}: float32 [batch, {info.image_size}, "
                                f"{info.image_size}, 3] RGB in [0, 255] -> probabilities",
            "outputs": list(OUTPUT_NAMES),
            "top_k": min(options.top_k, info.num_classes),
        },
        "tflite": tflite,
    })
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays that metrics dictionaries tend to hold."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"evaluation_metrics holds a {type(value).__name__}, which cannot be written as JSON")


def _clear_previous_export(package: str) -> None:
    """Removes what an earlier export to the same directory left, marker first."""
    for name in (artifacts.SUCCESS_MARKER, artifacts.MODEL_TARBALL, artifacts.KERAS_MODEL, TFLITE_MODEL,
                 TFLITE_PARITY_REPORT):
        path = os.path.join(package, name)
        if os.path.isfile(path):
            os.remove(path)
    shutil.rmtree(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR), ignore_errors=True)
    os.makedirs(package, exist_ok=True)


def _write_tarball(package: str, tarball: str) -> None:
    def anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in TARBALL_MEMBERS:
            archive.add(os.path.join(package, name), arcname=name, filter=anonymous)
    storage.write_bytes(tarball, buffer.getvalue())


def publish(local_dir: str, destination_uri: str) -> None:
    """Copies a finished package to ``destination_uri`` (local or gs://), the
    success marker last, so a reader that sees it sees a complete package."""
    marker = storage.join(destination_uri, artifacts.SUCCESS_MARKER)
    # A stale marker would vouch for a half-overwritten package.
    storage.remove_tree(marker)
    storage.makedirs(destination_uri)
    for source in storage.list_files(local_dir):
        relative = os.path.relpath(source, local_dir)
        if relative != artifacts.SUCCESS_MARKER:
            storage.copy_file(source, storage.join(destination_uri, *relative.split(os.sep)))
    storage.write_text(marker, "")
