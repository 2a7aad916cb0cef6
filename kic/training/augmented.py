"""Augmentation inside the compiled train step, on the accelerator.

Resampling every training image costs the host that feeds a GPU more CPU than
reading it from a cache does: a GPU machine's few cores then bound training.
Here the input only draws each image's transform
(``input_pipeline.Training(augment_in_step=True)``: a few numbers an image, from the same
stateless keys as on the host, so draws stay a function of (seed, epoch,
batch) and a resumed run replays them) and the model being trained resamples
its batch first, as part of the step that XLA compiles.

The wrapper is for training only: it holds no variables of its own (its
weights, and so checkpoints and best-epoch copies, are the classifier's), and
what is saved, evaluated and served is the classifier itself.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kic.data.augmentation import Augmentation, host_warp, warp


class AugmentInStep(keras.Model):
    """``classifier`` fed by an input of ``((pixels, transforms), target)``:
    in training the pixels are warped by their transforms first; anything
    else (validation's plain pixels, Keras's build before the first step)
    goes to the classifier as is."""

    def __init__(self, classifier: keras.Model, augmentation: Augmentation, **kwargs):
        # No autocast: under a mixed policy Keras would cast the transforms to 16 bits, whose offsets
        # (a hundred pixels and more) would then be a pixel or so off.
        super().__init__(autocast=False, **kwargs)
        self.classifier = classifier
        self.augmentation = augmentation

    def call(self, inputs, training=False):
        if isinstance(inputs, (tuple, list)):
            pixels, transforms = inputs
            if training:
                pixels = warp(pixels, tf.cast(transforms, tf.float32), exact=self.augmentation.exact)
            inputs = pixels
        return self.classifier(inputs, training=training)


def warped_on_host(batches: tf.data.Dataset, augmentation: Augmentation) -> tf.data.Dataset:
    """The in-step input's batches as the step sees them: for the few the
    host itself reads (batch-norm recalibration's images)."""
    return batches.map(lambda inputs, target: (host_warp(*inputs, exact=augmentation.exact), target))
