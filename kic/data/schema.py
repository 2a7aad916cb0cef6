"""The on-disk format of a prepared dataset, shared by prepare and train.

Each split is a set of TFRecord shards named ``<split>-<index>-of-<count>.tfrecord``.
Every record is a ``tf.train.Example`` with the features below. Images are
stored already validated, converted to RGB and re-encoded as JPEG, so no
training epoch ever decodes an original upload.
"""

from __future__ import annotations

IMAGE_ENCODED = "image/encoded"  # bytes: JPEG, RGB
IMAGE_HEIGHT = "image/height"  # int64
IMAGE_WIDTH = "image/width"  # int64
LABEL = "image/class/label"  # int64: index into the label list
SOURCE_URI = "image/source"  # bytes: where the original file came from
CONTENT_SHA256 = "image/sha256"  # bytes: hex digest of the original file


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def make_example(*, encoded: bytes, height: int, width: int, label: int,
                 source: str, sha256: str):
    """Builds one serialized record; tensorflow is imported lazily so the
    lightweight parts of the package stay importable without it."""
    import tensorflow as tf

    def _bytes(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        IMAGE_ENCODED: _bytes(encoded),
        IMAGE_HEIGHT: _int(height),
        IMAGE_WIDTH: _int(width),
        LABEL: _int(label),
        SOURCE_URI: _bytes(source.encode("utf-8")),
        CONTENT_SHA256: _bytes(sha256.encode("ascii")),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def feature_spec():
    import tensorflow as tf

    return {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        SOURCE_URI: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
