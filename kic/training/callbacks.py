"""The Keras callbacks of the training loop: validation with exact batch-norm
statistics, best-epoch restore, the reference-format epoch lines, and the
count of corrupt records skipped."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import tensorflow as tf

from kic.training import batch_norm

Log = Callable[[str], None]


class SkippedRecords(keras.callbacks.Callback):
    """Counts the training records that failed to decode in the first epoch
    (the input skips them rather than ending the run) and says so."""

    def __init__(self, decoded: tf.Variable, num_examples: int, log: Log):
        super().__init__()
        self.decoded, self.num_examples, self.log = decoded, num_examples, log
        self.count = 0

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.count = max(self.num_examples - int(self.decoded.numpy()), 0)
            if self.count:
                self.log(f"train: skipped {self.count} corrupt training record(s) of {self.num_examples}")


class Validation(keras.callbacks.Callback):
    """Validates after each epoch, first recomputing batch-norm statistics for
    the epoch's final weights from a few training batches (see
    kic.training.batch_norm), and adds the ``val_*`` metrics to the epoch's logs
    for the callbacks after it."""

    # Batch-norm statistics pool over images and spatial positions: a few
    # batches estimate them well, and cost about one training step.
    RECALIBRATION_BATCHES = 4

    def __init__(self, validation: tf.data.Dataset, training: tf.data.Dataset):
        super().__init__()
        self.validation, self.training = validation, training

    def on_train_begin(self, logs=None):
        self._recalibrate = batch_norm.Recalibrator(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self._recalibrate(self.training, self.RECALIBRATION_BATCHES)
        results = self.model.evaluate(self.validation, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by the monitored metric and restores
    them when training ends, so the saved model is the best, not the last."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.best_value = -float("inf")
        self.best_epoch = 0
        self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"monitored metric {self.monitor!r} missing from {sorted(logs or {})}")
        if value > self.best_value:
            self.best_value, self.best_epoch = float(value), epoch + 1
            self._best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch in the reference format (`- loss: 0.41 - accuracy: ...`),
    which tuning jobs parse with regexes, plus training throughput and time."""

    def __init__(self, epochs: int, num_examples: int, log: Log):
        super().__init__()
        self.epochs, self.num_examples, self.log = epochs, num_examples, log

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last_batch = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        training = self._last_batch - self._start  # without validation
        total = time.perf_counter() - self._start
        logs = logs or {}
        ordered = [key for key in logs if not key.startswith("val_")] + [key for key in logs if key.startswith("val_")]
        values = " ".join(f"- {key}: {logs[key]:.4f}" for key in ordered if key != "learning_rate")
        self.log(f"Epoch {epoch + 1}/{self.epochs} {values} - {self.num_examples / max(training, 1e-9):.1f} images/s "
                 f"- {total:.1f}s")
