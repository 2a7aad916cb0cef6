"""Augmentation resampled inside the compiled train step (kic.training.augmented):
the same draws as on the host, the same sampling as TensorFlow's kernel, and a
step that XLA and mixed precision still compile."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_backbone import train_options

from kic.config import TrainingConfig
from kic.data import dataset_info, input_pipeline
from kic.data.augmentation import BOTH, Augmentation, host_warp, warp
from kic.model.loading import load_keras_model
from kic.training import precision, train
from kic.training.augmented import AugmentInStep

SIZE = 40
KEY = tf.constant([7, 8], tf.int64)


def kernel(images, transforms, interpolation="BILINEAR") -> np.ndarray:
    """TensorFlow's own resampling (what the host ran before, and what Keras's layers run)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation=interpolation, fill_mode="REFLECT").numpy()


@pytest.mark.parametrize("augmentation", [Augmentation(flip=BOTH, rotation=0.2, zoom=0.1),
                                          Augmentation(flip="horizontal", rotation=1.0, zoom=1.0),
                                          Augmentation(rotation=-1.0, zoom=-1.0)])
def test_the_warp_samples_as_tensorflows_kernel(augmentation):
    """Far rotations and zooms out reach the reflected border many times over: it folds as the kernel's does."""
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE + 8, 3), dtype=np.uint8))
    transforms = augmentation.draw(16, KEY, height=SIZE, width=SIZE + 8)
    expected = kernel(images, transforms)
    assert np.abs(warp(images, transforms).numpy() - expected).max() < 0.01
    on_host = host_warp(images, transforms).numpy()
    assert on_host.dtype == np.float16 and np.abs(on_host.astype(np.float32) - expected).max() <= 0.5


def test_a_flip_alone_stays_exact_in_the_step():
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (32, SIZE, SIZE, 3), dtype=np.uint8))
    flips = Augmentation(flip=BOTH)
    transforms = flips.draw(32, KEY, height=SIZE, width=SIZE)
    np.testing.assert_array_equal(warp(images, transforms, exact=True).numpy(), kernel(images, transforms, "NEAREST"))


def dataset(prepared: str, *, in_step: bool, seed: int = 1) -> tuple[tf.data.Dataset, input_pipeline.EpochOrder]:
    data = dataset_info.load(prepared)
    order = input_pipeline.EpochOrder()
    return input_pipeline.make_dataset(data.shard_paths(prepared, "train"), input_pipeline.InputOptions(
        input_pipeline.Images(image_size=32, interpolation="bilinear", num_classes=data.num_classes,
                              binary_mode=False, num_examples=data.splits["train"].num_examples),
        input_pipeline.Reading(batch_size=8),
        input_pipeline.Training(seed=seed, order=order, augment_in_step=in_step,
                                augmentation=Augmentation.from_config(TrainingConfig(augmentation=True))))), order


def test_the_step_gets_the_draws_the_host_would_have_applied(prepared):
    """Same keys, same transforms: a function of (seed, epoch, batch), so a resumed run replays them."""
    on_host, host_order = dataset(prepared, in_step=False)
    for_step, step_order = dataset(prepared, in_step=True)
    seen = []
    for epoch in (0, 1):
        host_order.begin(epoch)
        step_order.begin(epoch)
        for (pixels, target), ((raw, transforms), step_target) in zip(on_host, for_step, strict=True):
            assert raw.dtype == tf.uint8 and transforms.shape == (raw.shape[0], 8)
            np.testing.assert_array_equal(target, step_target)
            np.testing.assert_array_equal(pixels, host_warp(raw, transforms))
            seen.append(transforms.numpy())
    assert not np.allclose(seen[0], seen[len(seen) // 2])  # every epoch new draws


def tiny_classifier() -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(x))


def test_the_wrapper_warps_only_in_training_and_is_the_classifiers_variables():
    classifier = tiny_classifier()
    augmentation = Augmentation(flip=BOTH, rotation=0.2, zoom=0.1)
    wrapped = AugmentInStep(classifier, augmentation)
    pixels = tf.constant(np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    transforms = augmentation.draw(4, KEY, height=32, width=32)
    trained = wrapped((pixels, transforms), training=True).numpy()
    np.testing.assert_allclose(trained, classifier(warp(pixels, transforms), training=True).numpy(), atol=1e-5)
    assert not np.allclose(trained, classifier(pixels, training=True).numpy(), atol=1e-3)
    np.testing.assert_array_equal(wrapped(pixels).numpy(), classifier(pixels).numpy())  # validation's input
    assert [id(v) for v in wrapped.variables] == [id(v) for v in classifier.variables]


@pytest.fixture
def without_op_determinism():
    """Keras leaves XLA off while op determinism is on, which a repeatable CPU training earlier in the session
    turns on; a GPU training (the in-step warp's case) has it off."""
    from tensorflow.python.framework import config

    was_on = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield
    if was_on:
        config.enable_op_determinism()


def test_a_compiled_mixed_float16_step_warps_on_the_cpu(without_op_determinism):
    """XLA compiles the warp with the model (ImageProjectiveTransformV3 alone it could not)."""
    augmentation = Augmentation(flip=BOTH, rotation=0.2, zoom=0.1)
    with precision.policy("mixed_float16"):
        classifier = tiny_classifier()
        wrapped = AugmentInStep(classifier, augmentation)
        wrapped.compile(optimizer=precision.with_loss_scaling(keras.optimizers.SGD(0.1), "mixed_float16"),
                        loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=True)
    assert wrapped.jit_compile
    pixels = tf.constant(np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    batches = tf.data.Dataset.from_tensors(
        ((pixels, augmentation.draw(8, KEY, height=32, width=32)), tf.one_hot(tf.range(8) % 3, 3)))
    before = [v.numpy().copy() for v in classifier.trainable_variables]
    history = wrapped.fit(batches, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, classifier.trainable_variables, strict=True))


def test_train_augments_in_the_step_when_asked(prepared, tiny_backbone, tmp_path):
    logs = []
    config = TrainingConfig(epochs=2, batch_size=8, augmentation=True)
    result = train(prepared, str(tmp_path / "model"), config,
                   train_options(tiny_backbone, augment_in="step", precision="mixed_float16"), log=logs.append)
    assert "train: augmentation resampled in the train step" in logs
    assert result.epochs_run == 2 and all(np.isfinite(result.history["loss"]))
    saved = load_keras_model(str(tmp_path / "model"))  # the classifier alone: what evaluation and export read
    assert not isinstance(saved, AugmentInStep) and len(saved.inputs) == 1
