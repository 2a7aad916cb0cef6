"""Every export is checked against the trained model before it is packaged.

The reloaded SavedModel, as TensorFlow 2 loads it and as TF Serving does (a
TF1 session restoring the variables from the checkpoint), must reproduce the
Keras model's probabilities on the same images; otherwise
``ExportVerificationError`` fails the export.
"""

from __future__ import annotations

import struct

import numpy as np
import tensorflow as tf

from kic.errors import DataError
from kic.model import loading, preprocessing
from kic.model.model_info import ModelInfo
from kic.serving.contract import INPUT_NAME, SIGNATURE_NAME

# Max abs difference of probabilities allowed between the reloaded SavedModel
# and the in-memory Keras model: the same float32 maths, but not the same
# kernels (the SavedModel's graph is optimised and fused differently), which
# adds up over a deep network (4e-5 measured on Inception V3); a real skew,
# such as another resize, is 1e-2 or more.
SAVED_MODEL_TOLERANCE = 1e-4


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the trained model's predictions (a bug, not the user's doing)."""


def generated_sample_images(count: int = 4) -> list[bytes]:
    """Deterministic JPEGs of assorted sizes with structure (not flat colour).
    The second is stored sideways with an EXIF orientation, so that every
    export runs the orientation parsing as TF Serving will."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        height, width = 96 + 40 * index, 128 + 24 * index
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
        noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        jpeg = tf.io.encode_jpeg(noisy, quality=90).numpy()
        images.append(_with_exif_orientation(jpeg, 6) if index == 1 else jpeg)
    return images


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """An APP1 Exif segment (big-endian TIFF, IFD0 holding only Orientation) inserted after SOI."""
    ifd0 = struct.pack(">HHHIHH", 1, preprocessing.ORIENTATION_TAG, 3, 1, orientation, 0) + bytes(4)
    payload = preprocessing.EXIF_HEADER + b"MM\x00*" + struct.pack(">I", 8) + ifd0
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def decoded_pixels(samples: list[bytes], info: ModelInfo) -> np.ndarray:
    """The pixels the serving signature feeds the model: [n, size, size, 3] float32."""
    try:
        return np.stack([preprocessing.decode_and_resize(tf.constant(raw), info.image_size, info.interpolation,
                                                         info.image_short_side).numpy() for raw in samples])
    except tf.errors.InvalidArgumentError as error:
        raise DataError(f"a sample image for export verification cannot be decoded: {error.message}") from None


def keras_probabilities(model, info: ModelInfo, pixels: np.ndarray) -> np.ndarray:
    """The Keras model's answer in the serving contract's form (one column in binary mode)."""
    return loading.logits_to_probabilities(model(pixels, training=False), info.binary_mode).numpy()


def max_difference(served: np.ndarray, reference: np.ndarray, what: str) -> float:
    """The largest difference between two answers of the same contract; a
    different shape (say [1-p, p] against [p]) is a failure, not something
    for broadcasting to paper over."""
    if np.shape(served) != np.shape(reference):
        raise ExportVerificationError(f"{what} returns probabilities of shape {np.shape(served)}, but the trained "
                                      f"Keras model's are {np.shape(reference)}")
    return float(np.max(np.abs(served - reference)))


def verify_saved_model(version_dir: str, samples: list[bytes], reference: np.ndarray) -> float:
    """Returns the largest difference from ``reference`` (the Keras model's
    probabilities on ``samples``, as ``keras_probabilities`` gives them);
    raises ExportVerificationError over the tolerance."""
    serve = tf.saved_model.load(version_dir).signatures[SIGNATURE_NAME]
    loaded = serve(**{INPUT_NAME: tf.constant(samples)})["probabilities"].numpy()
    max_abs_diff = max(max_difference(loaded, reference, "the exported SavedModel"),
                       max_difference(_session_probabilities(version_dir, samples), reference,
                                      "the exported SavedModel, loaded as TF Serving does,"))
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
