"""Loading a trained kic model, wherever it lives, and reading its outputs."""

from __future__ import annotations

import os
import tarfile
import tempfile

import keras
import tensorflow as tf

from kic import artifacts, storage


def resolve_model_dir(uri: str) -> str:
    """A local directory holding ``model.keras`` and ``model_info.json``, from a
    train output or export package directory, or a ``model.tar.gz``, local or gs://."""
    if not uri.endswith(".tar.gz") and not storage.is_gcs(uri):
        _require_model(uri, uri)
        return uri
    local_dir = tempfile.mkdtemp(prefix="kic-model-")
    if uri.endswith(".tar.gz"):
        with storage.local_copy(uri) as archive, tarfile.open(archive) as tar:
            tar.extractall(local_dir, filter="data")
    else:
        for name in (artifacts.KERAS_MODEL, artifacts.MODEL_INFO):
            source = storage.join(uri, name)
            if storage.exists(source):
                storage.write_bytes(os.path.join(local_dir, name), storage.read_bytes(source))
    _require_model(local_dir, uri)
    return local_dir


def _require_model(local_dir: str, uri: str) -> None:
    for name in (artifacts.KERAS_MODEL, artifacts.MODEL_INFO):
        if not os.path.exists(os.path.join(local_dir, name)):
            raise FileNotFoundError(f"{uri} is not a kic model: it has no {name}")


def load_keras_model(model_dir: str) -> keras.Model:
    """Architecture from its config, weights as data: ``safe_mode`` refuses
    serialized Python code, so a model file from elsewhere cannot run any."""
    import kic.model.pixel_scaling  # noqa: F401  (registers kic's serializable layers)

    return keras.models.load_model(os.path.join(model_dir, artifacts.KERAS_MODEL), safe_mode=True,
                                   compile=False)


def logits_to_probabilities(logits: tf.Tensor, binary_mode: bool) -> tf.Tensor:
    """Per-class probabilities; in binary mode [P(negative), P(positive)]."""
    if binary_mode:
        positive = tf.sigmoid(tf.cast(logits, tf.float32))
        return tf.concat([1.0 - positive, positive], axis=-1)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
