"""The Keras callbacks of the training loop: validation with exact batch-norm
statistics, best-epoch restore, the reference-format epoch lines, and the
count of corrupt records skipped."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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
                self.log(f"train: warning: skipped {self.count} corrupt training record(s) of {self.num_examples}")


# Batch-norm statistics pool over images and spatial positions: a few hundred
# images estimate them well whatever the batch size, for a forward pass over
# them. benchmarks/bench_recalibration.py (fine-tuning a backbone on shifted
# data, batch size 8): none 0.64 +- 0.13 validation accuracy, 32 images
# 0.94 +- 0.04; the estimate's own spread over draws shrinks from 0.08 (8
# images) and 0.04 (32) to 0.00 at 256, for about 1 s per epoch at 64 px.
RECALIBRATION_IMAGES = 256


class Validation(keras.callbacks.Callback):
    """Validates after each epoch, first recomputing batch-norm statistics for
    the epoch's final weights from ``recalibration_images`` training images
    (see kic.training.batch_norm; 0: keep the moving averages), and adds the
    ``val_*`` metrics to the epoch's logs for the callbacks after it."""

    def __init__(self, validation: tf.data.Dataset, training: tf.data.Dataset,
                 recalibration_images: int = RECALIBRATION_IMAGES):
        super().__init__()
        self.validation, self.training = validation, training
        self.recalibration_images = recalibration_images

    def on_train_begin(self, logs=None):
        self._recalibrate = batch_norm.Recalibrator(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self._recalibrate(self.training, self.recalibration_images)
        results = self.model.evaluate(self.validation, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by the monitored metric;
    ``restore_best`` puts them back once training is over (which may take
    several fits: a resumed epoch is a fit of its own), so the saved model is
    the best, not the last."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.best_value = -float("inf")
        self.best_epoch = 0
        self.best_weights = None  # a list of arrays (checkpoints save and restore it)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"monitored metric {self.monitor!r} missing from {sorted(logs or {})}")
        if value > self.best_value:
            self.best_value, self.best_epoch = float(value), epoch + 1
            self.best_weights = self.model.get_weights()

    def restore_best(self, model: keras.Model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch in the reference's format and order, which tuning
    jobs parse with regexes such as ``val_accuracy: ([0-9\\.]+)``:
    ``- loss - accuracy - <other metrics> - val_loss - val_accuracy - ...``,
    the metrics in the order they were compiled (Keras 3 sorts its logs by
    name). Then training throughput, the epoch's time, and the time left."""

    def __init__(self, epochs: int, num_examples: int, log: Log, metric_names: Sequence[str] = ("accuracy",)):
        super().__init__()
        self.epochs, self.num_examples, self.log = epochs, num_examples, log
        self._rank = {name: index for index, name in enumerate(("loss", *metric_names))}

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last_batch = time.perf_counter()
        self._batches, self._first_batch = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if not self._batches:
            self._first_batch = now - self._start
        self._batches += 1
        self._last_batch = now

    def on_epoch_end(self, epoch, logs=None):
        training = self._last_batch - self._start  # without validation
        total = time.perf_counter() - self._start
        logs = logs or {}
        values = " ".join(f"- {key}: {logs[key]:.4f}" for key in self.ordered(logs))
        left = self.epochs - epoch - 1  # an upper bound with early stopping
        eta = f" - ETA {format_duration(self._epoch_estimate(epoch, training, total) * left)}" if left else ""
        self.log(f"Epoch {epoch + 1}/{self.epochs} {values} - {self.num_examples / max(training, 1e-9):.1f} images/s "
                 f"- {total:.1f}s{eta}")

    def _epoch_estimate(self, epoch: int, training: float, total: float) -> float:
        """How long the next epochs take: this one's time, but without the
        first epoch's first step, where the training function is traced
        (for a few steps of small images, most of the epoch)."""
        if epoch or self._batches < 2:
            return total
        typical = (training - self._first_batch) / (self._batches - 1)
        return total - self._first_batch + typical

    def ordered(self, keys) -> list[str]:
        """Training metrics before validation ones, each in compile order."""

        def position(key: str):
            validation = key.startswith("val_")
            name = key.removeprefix("val_")
            return validation, self._rank.get(name, len(self._rank)), name

        return sorted((key for key in keys if key != "learning_rate"), key=position)


def format_duration(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
