"""Loading a trained kic model, wherever it lives, and reading its outputs."""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

from kic import artifacts, storage


@contextlib.contextmanager
def local_model_dir(uri: str) -> Iterator[str]:
    """A local directory holding ``model.keras`` and ``model_info.json``, for as
    long as the context lasts: from a train output or export package directory,
    or a ``model.tar.gz``, local or gs:// (copied by ``storage.local_copy``)."""
    with storage.local_copy(uri) as local:
        if not os.path.isfile(local):
            _require_model(local, uri)
            yield local
            return
        with tempfile.TemporaryDirectory(prefix="kic-model-") as extracted:
            with tarfile.open(local) as tar:
                tar.extractall(extracted, filter="data")
            _require_model(extracted, uri)
            yield extracted


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
