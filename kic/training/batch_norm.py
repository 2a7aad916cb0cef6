"""Exact batch-norm statistics for the current weights ("precise BN").

Keras Applications update their batch-norm moving averages with momentum
0.99-0.999. While the weights change quickly (a backbone trained from scratch,
or fine-tuned far from ImageNet, on a few hundred steps) the averages lag far
behind them, and the model predicts at chance in inference mode while its
training accuracy looks fine. Setting the statistics to the average batch
statistics of a few hundred training images before each validation removes
the lag, whatever the dataset size.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class Recalibrator:
    """Sets every trainable batch-norm layer's moving mean and variance to the
    average of its batch statistics over a number of images, in batches of
    ``(pixels, target)``.
    Weights are untouched. Build it once per model: the statistics function is
    compiled on first use and reused.

    Under a distribution strategy (the one the model was built in) each
    replica computes the statistics of its own part of each batch, as the
    layers do in training; they are summed over every replica of every
    worker, so all end up with the same values, from everyone's images.
    Keras 3 needs this: in training each replica updates its own copy of the
    moving statistics (they are not aggregated), so without it the copies
    drift apart and the chief saves those of its own replica and shard.

    The batch-norm layers must sit in the model itself or in a functional
    sub-model that takes the model's input as is (kic's backbone does)."""

    def __init__(self, model: keras.Model):
        self._strategy = model.distribute_strategy
        owners = _layers_by_owner(model)
        self._groups = [layers for _owner, layers in owners]
        self._probes = [_statistics_probe(owner, layers) for owner, layers in owners]
        self._step = None

    def __call__(self, batches: tf.data.Dataset, images: int) -> int:
        """Uses whole batches until at least ``images`` images in all (or the
        dataset's end: every worker's); returns the number of images used."""
        if not self._probes or images < 1:
            return 0
        if self._step is None:
            self._step = self._distributed_step()
        totals, used = None, 0
        for batch in self._strategy.experimental_distribute_dataset(batches):
            statistics, count = self._step(batch)
            totals = statistics if totals is None else [
                total + value for total, value in zip(totals, statistics, strict=True)]
            used += int(count)
            if used >= images:  # the same count on every worker: all stop together
                break
        if not used:
            return 0
        values = iter(totals)
        for layers in self._groups:
            for layer in layers:
                layer.moving_mean.assign(next(values) / used)
                layer.moving_variance.assign(next(values) / used)
        return used

    def _distributed_step(self):
        strategy, probes = self._strategy, self._probes

        def on_replica(pixels):
            # Each replica's statistics weigh by its image count: the last
            # batch may be short, and a replica may get none of it. One
            # vector, the count last, so that one all-reduce sums them all.
            count = tf.cast(tf.shape(pixels)[0], tf.float32)
            statistics = [tf.math.multiply_no_nan(value, count) for probe in probes for value in probe(pixels)]
            return tf.concat([*statistics, [count]], axis=0)

        @tf.function(reduce_retracing=True)
        def step(batch):
            pixels, _ = batch
            summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(on_replica, args=(pixels,)), axis=None)
            sizes = [int(layer.moving_mean.shape[0]) for layers in self._groups for layer in layers for _ in "mv"]
            *statistics, count = tf.split(summed, [*sizes, 1])
            return statistics, count[0]

        return step


def recalibrate(model: keras.Model, batches: tf.data.Dataset, images: int) -> int:
    """One-off use of Recalibrator; returns the number of images used."""
    return Recalibrator(model)(batches, images)


def _layers_by_owner(model: keras.Model) -> list[tuple[keras.Model, list]]:
    groups = []
    own = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if own:
        groups.append((model, own))
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.trainable:
            groups.extend(_layers_by_owner(layer))
    return groups


def _statistics_probe(owner: keras.Model, layers: list):
    """pixels -> [mean, variance] of each layer's input,
    computed as the layer itself does in training (biased variance), with
    every batch-norm upstream also normalising by batch statistics."""
    inputs_model = keras.Model(owner.inputs, [layer.input for layer in layers])

    def probe(pixels):
        activations = inputs_model(pixels, training=True)
        if not isinstance(activations, (list, tuple)):
            activations = [activations]
        statistics = []
        for layer, activation in zip(layers, activations, strict=True):
            activation = tf.cast(activation, tf.float32)
            rank = len(activation.shape)
            axes = [axis for axis in range(rank) if axis != layer.axis % rank]
            mean, variance = tf.nn.moments(activation, axes=axes)
            statistics += [mean, variance]
        return statistics

    return probe
