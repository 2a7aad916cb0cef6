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

    The batch-norm layers must sit in the model itself or in a functional
    sub-model that takes the model's input as is (kic's backbone does)."""

    def __init__(self, model: keras.Model):
        self._probes = [(_statistics_probe(owner, layers), layers) for owner, layers in _layers_by_owner(model)]

    def __call__(self, batches: tf.data.Dataset, images: int) -> int:
        """Uses whole batches until at least ``images`` images (or the
        dataset's end); returns the number of images used."""
        if not self._probes or images < 1:
            return 0
        totals: list[list[tf.Tensor]] = [[] for _ in self._probes]
        used = 0
        for pixels, _ in batches:
            count = int(pixels.shape[0])
            for index, (probe, _layers) in enumerate(self._probes):
                # Each batch weighs by its size: the last one may be short.
                statistics = [value * count for value in probe(pixels)]
                totals[index] = statistics if not totals[index] else [
                    total + value for total, value in zip(totals[index], statistics, strict=True)]
            used += count
            if used >= images:
                break
        if not used:
            return 0
        for (_, layers), total in zip(self._probes, totals, strict=True):
            for position, layer in enumerate(layers):
                layer.moving_mean.assign(total[2 * position] / used)
                layer.moving_variance.assign(total[2 * position + 1] / used)
        return used


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
    """A compiled function: pixels -> [mean, variance] of each layer's input,
    computed as the layer itself does in training (biased variance), with
    every batch-norm upstream also normalising by batch statistics."""
    inputs_model = keras.Model(owner.inputs, [layer.input for layer in layers])

    @tf.function(reduce_retracing=True)
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
