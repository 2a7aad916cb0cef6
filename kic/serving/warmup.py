"""TF Serving warm-up records, so the first real request is not the slow one.

A warm-up file is a TFRecord of tensorflow.serving.PredictionLog protos. The
few fields needed are encoded by hand so that export does not depend on the
tensorflow-serving-api package (which pins the TensorFlow version); field
numbers are from tensorflow_serving/apis/{prediction_log,predict,model}.proto.
"""

from __future__ import annotations

import os

import tensorflow as tf

from kic.serving.contract import INPUT_NAME, SIGNATURE_NAME


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
