"""Exact batch-norm statistics for the current weights ("precise BN").

Keras Applications update their batch-norm moving averages with momentum
0.99-0.999. While the weights change quickly (a backbone trained from scratch,
or fine-tuned far from ImageNet, on a few hundred steps) the averages lag far
behind them, and the model predicts at chance in inference mode while its
training accuracy looks fine. Recomputing the statistics as a plain average
over training batches before each validation removes the lag, whatever the
dataset size.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def trainable_batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    found = []
    for layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


def _walk(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def recalibrate(model: keras.Model, batches: tf.data.Dataset, max_batches: int) -> int:
    """Sets every trainable batch-norm layer's moving mean and variance to the
    average of the batch statistics over up to ``max_batches`` batches of
    ``(pixels, target)``. Weights are untouched. Returns the batches used."""
    layers = trainable_batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for pixels, _ in batches.take(max_batches):
            # With momentum k/(k+1) at the k-th batch the moving value becomes
            # the running mean of the batch statistics. Momentum is read each
            # call in eager mode, which is why this loop is not a tf.function.
            for layer in layers:
                layer.momentum = used / (used + 1)
            model(pixels, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used
