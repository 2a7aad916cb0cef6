"""Loading a trained kic model, wherever it lives, and reading its outputs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

from kic import artifacts, storage
from kic.errors import DataError
from kic.model import model_info
from kic.model.model_info import ModelInfo


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
            storage.extract_tarball(local, extracted)
            _require_model(extracted, uri)
            yield extracted


def _require_model(local_dir: str, uri: str) -> None:
    for name in (artifacts.KERAS_MODEL, artifacts.MODEL_INFO):
        if not os.path.exists(os.path.join(local_dir, name)):
            raise DataError(f"{uri} is not a kic model: it has no {name}")


def load_keras_model(model_dir: str) -> keras.Model:
    """Architecture from its config, weights as data: ``safe_mode`` refuses
    serialized Python code, so a model file from elsewhere cannot run any."""
    import kic.model.pixel_scaling  # noqa: F401  (registers kic's serializable layers)

    return keras.models.load_model(os.path.join(model_dir, artifacts.KERAS_MODEL), safe_mode=True,
                                   compile=False)


def load_trained_model(model_dir: str) -> tuple[keras.Model, ModelInfo]:
    """The model and its info from a local model directory, checked against each other."""
    info = model_info.load(model_dir)
    model = load_keras_model(model_dir)
    expected = (info.image_size, info.image_size, 3)
    if tuple(model.input_shape[1:]) != expected:
        raise DataError(f"{model_dir}: the model takes inputs of shape {model.input_shape[1:]}, but its "
                        f"{artifacts.MODEL_INFO} says image_size {info.image_size}, i.e. {expected}")
    return model, info


def logits_to_probabilities(logits: tf.Tensor, binary_mode: bool) -> tf.Tensor:
    """What the serving contract returns as ``probabilities``: softmax
    [batch, num_classes]; in binary mode the sigmoid [batch, 1], the
    probability of the positive class (``class_names[POSITIVE_CLASS_INDEX]``)."""
    if binary_mode:
        return tf.sigmoid(tf.cast(logits, tf.float32))
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)


def class_scores(probabilities: tf.Tensor, binary_mode: bool) -> tf.Tensor:
    """One score per class, [batch, num_classes], for top-1 and top-k: the
    probabilities themselves, or [1 - p, p] from binary mode's single column.
    Works eagerly on numpy arrays too."""
    probabilities = tf.convert_to_tensor(probabilities, dtype=tf.float32)
    if binary_mode:
        return tf.concat([1.0 - probabilities, probabilities], axis=-1)
    return probabilities
