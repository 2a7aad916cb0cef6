"""Training: optimizers, loss, augmentation, frozen backbone, best epoch, early
stopping, batch-norm recalibration and the incremental-training truth table.

Training runs use the tiny test backbone and the session's shared prepared
dataset and trained model (conftest.py)."""

import dataclasses
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_backbone import IMAGE_SIZE, train_options

from kic import artifacts
from kic.config import INTERPOLATIONS, HyperparameterError, TrainingConfig
from kic.data import dataset_info, input_pipeline, schema
from kic.model import classifier, preprocessing
from kic.model.loading import load_keras_model
from kic.model.model_info import ModelInfo
from kic.training import batch_norm, optimizers, train
from kic.training.callbacks import BestEpoch
from kic.training.loop import _loss

QUIET = dict(log=lambda _message: None)


@pytest.fixture(scope="module")
def binary_prepared(tmp_path_factory, prepared):
    """The shared dataset without its third class."""
    root = tmp_path_factory.mktemp("binary")
    from kic.data.prepare import PrepareOptions, prepare_dataset
    from kic.demo_data import write_demo_dataset

    write_demo_dataset(str(root / "images"), images_per_class=12, size=40)
    shutil.rmtree(root / "images" / "triangle")
    prepare_dataset(PrepareOptions(source=str(root / "images"), output_dir=str(root / "prepared"),
                                   validation_fraction=0.25, test_fraction=0.0, image_short_side=40, workers=1))
    return str(root / "prepared")


@pytest.fixture(scope="module")
def six_classes_prepared(tmp_path_factory):
    """Six classes (two draws of the demo shapes), more than top-5 accuracy needs."""
    from kic.data.prepare import PrepareOptions, prepare_dataset
    from kic.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("six")
    for seed, suffix in ((0, "a"), (1, "b")):
        write_demo_dataset(str(root / suffix), images_per_class=6, size=32, seed=seed)
        for shape in os.listdir(root / suffix):
            shutil.move(str(root / suffix / shape), str(root / "images" / f"{shape}_{suffix}"))
    prepare_dataset(PrepareOptions(source=str(root / "images"), output_dir=str(root / "prepared"),
                                   validation_fraction=0.34, test_fraction=0.0, image_short_side=32, workers=1))
    return str(root / "prepared")


def _head(model_dir) -> np.ndarray:
    return load_keras_model(str(model_dir)).get_layer(classifier.DENSE_LAYER).get_weights()[0]


# ---------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name, expected", [
    ("adam", {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4}),
    ("sgd", {"momentum": 0.7, "nesterov": False}),
    ("nesterov", {"momentum": 0.7, "nesterov": True}),
    ("rmsprop", {"rho": 0.85, "momentum": 0.7, "epsilon": 1e-4}),
    ("adagrad", {"initial_accumulator_value": 0.01, "epsilon": 1e-4}),
    ("adadelta", {"rho": 0.85, "epsilon": 1e-4}),
])
def test_each_optimizer_gets_its_own_parameters(name, expected):
    config = TrainingConfig(optimizer=name, learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-4, momentum=0.7,
                            rho=0.85, initial_accumulator_value=0.01)
    optimizer = optimizers.build_optimizer(config)
    settings = optimizer.get_config()
    assert settings["learning_rate"] == pytest.approx(0.05)
    for key, value in expected.items():
        assert settings[key] == pytest.approx(value), key


# ------------------------------------------------------------ loss and input
@pytest.mark.parametrize("binary", [False, True])
def test_label_smoothing_reaches_the_loss(binary):
    loss = _loss(TrainingConfig(label_smoothing=0.3, binary_mode=binary))
    assert loss.get_config()["label_smoothing"] == pytest.approx(0.3)
    # A perfectly confident right answer still costs something when smoothing is on.
    target = tf.constant([[1.0]]) if binary else tf.constant([[1.0, 0.0, 0.0]])
    logits = tf.constant([[20.0]]) if binary else tf.constant([[20.0, -20.0, -20.0]])
    assert float(loss(target, logits)) > 0.1
    assert float(_loss(TrainingConfig(label_smoothing=0.0, binary_mode=binary))(target, logits)) < 1e-3


@pytest.mark.parametrize("rotation, zoom", [(-1.0, 1.0), (1.0, -1.0)])
def test_the_ends_of_the_augmentation_ranges_train(prepared, tiny_backbone, tmp_path, rotation, zoom):
    """Every value in the reference's ranges trains, the ends included (zoom -1, which Keras 3's RandomZoom refuses)."""
    config = TrainingConfig(epochs=1, batch_size=8, augmentation=True, augmentation_random_flip="horizontal",
                            augmentation_random_rotation=rotation, augmentation_random_zoom=zoom)
    result = train(prepared, str(tmp_path / "model"), config, train_options(tiny_backbone), **QUIET)
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"][0])


def test_each_interpolation_reaches_the_resize(prepared):
    """The input pipeline's pixels are the stored JPEG resized with the chosen
    method (no antialiasing on a shrink below 2x, rounded to whole levels),
    and the methods differ."""
    info = dataset_info.load(prepared)
    shards = info.shard_paths(prepared, "validation")
    record = next(iter(tf.data.TFRecordDataset(shards)))
    encoded = tf.io.parse_single_example(record, schema.feature_spec())[schema.IMAGE_ENCODED]
    decoded = tf.cast(tf.io.decode_jpeg(encoded, channels=3, dct_method=preprocessing.JPEG_DCT_METHOD), tf.float32)
    size = 24  # a downscale from the stored 40 px: less than 2x
    seen = []
    for interpolation in INTERPOLATIONS:
        batches = input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
            input_pipeline.Images(image_size=size, interpolation=interpolation, num_classes=3, binary_mode=False,
                                  num_examples=info.splits["validation"].num_examples),
            input_pipeline.Reading(batch_size=1)))
        pixels = next(iter(batches))[0][0].numpy()
        expected = tf.round(tf.clip_by_value(tf.image.resize(decoded, [size, size], method=interpolation), 0, 255))
        # Within one level: the serving decoder's IDCT may differ from this plain decode by a level.
        np.testing.assert_allclose(pixels, expected.numpy(), atol=1.0, err_msg=interpolation)
        seen.append(pixels)
    distinct = {tuple(np.round(pixels, 2).ravel()) for pixels in seen}
    assert len(distinct) >= 6  # the methods really differ on a downscale (a few may coincide)


def test_a_shrink_of_2x_or_more_is_antialiased_in_training_and_serving_alike():
    noise = tf.constant(np.random.default_rng(0).integers(0, 256, (96, 72, 3)), tf.uint8)

    def reference(size, antialias):
        resized = tf.image.resize(tf.cast(noise, tf.float32), [size, size], method="bicubic", antialias=antialias)
        return tf.round(tf.clip_by_value(resized, 0, 255)).numpy()

    # 96 -> 24: a 4x shrink of the longer side, antialiased; 96 -> 64: 1.5x, not.
    assert np.array_equal(preprocessing.resize(noise, 24, "bicubic").numpy(), reference(24, True))
    assert np.array_equal(preprocessing.resize(noise, 64, "bicubic").numpy(), reference(64, False))
    assert not np.array_equal(reference(24, True), reference(24, False))  # the switch matters here


def test_the_input_keeps_decoded_images_in_memory_on_disk_or_nowhere(prepared, tmp_path):
    """The same pixels, in the same order, whichever cache holds them; a later epoch reads the disk
    cache, not the records (they are gone by then)."""
    info = dataset_info.load(prepared)
    records = tmp_path / "records"
    shutil.copytree(prepared, records)
    shards = info.shard_paths(str(records), "train")
    count = info.splits["train"].num_examples

    def dataset(**cache):
        return input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
            input_pipeline.Images(image_size=24, interpolation="bilinear", num_classes=3, binary_mode=False,
                                  num_examples=count),
            input_pipeline.Reading(batch_size=count, **cache)))

    def pixels_and_labels(batches):
        (pixels, targets), = list(batches)
        return pixels.numpy(), targets.numpy()

    in_memory = pixels_and_labels(dataset())
    assert in_memory[0].dtype == np.uint8  # to the model, which casts on its own device
    nowhere = pixels_and_labels(dataset(memory_cache_bytes=0))
    on_disk = dataset(memory_cache_bytes=0, disk_cache_dir=str(tmp_path / "cache"))
    first_epoch = pixels_and_labels(on_disk)
    shutil.rmtree(records)
    later_epoch = pixels_and_labels(on_disk)
    for other in (nowhere, first_epoch, later_epoch):
        np.testing.assert_array_equal(other[0], in_memory[0])
        np.testing.assert_array_equal(other[1], in_memory[1])
    written = sum(path.stat().st_size for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert count * 24 * 24 * 3 <= written < count * 24 * 24 * 3 * 1.5
    home = input_pipeline.decoded_images_home
    assert home(count, 24) == input_pipeline.MEMORY
    assert home(count, 24, memory_cache_bytes=0, disk_cache_dir=str(tmp_path / "cache")) == input_pipeline.DISK
    assert home(count, 24, memory_cache_bytes=0) == input_pipeline.NOWHERE  # no folder given
    assert home(count, 24, data_service="grpc://localhost:5050") == input_pipeline.NOWHERE


def test_a_training_input_from_the_disk_cache_has_every_image_once_an_epoch_in_new_orders(prepared, tmp_path):
    """The first epoch writes the cache; the later ones read it back, each mixed in its own order: with an
    EpochOrder (as training has) inside the snapshot's reader, without one after it."""
    info = dataset_info.load(prepared)
    count = info.splits["train"].num_examples

    def epochs(order):
        cache = tmp_path / ("cache-with-order" if order else "cache")
        dataset = input_pipeline.make_dataset(info.shard_paths(prepared, "train"), input_pipeline.InputOptions(
            input_pipeline.Images(image_size=24, interpolation="bilinear", num_classes=3, binary_mode=False,
                                  num_examples=count),
            input_pipeline.Reading(batch_size=count, memory_cache_bytes=0, disk_cache_dir=str(cache)),
            input_pipeline.Training(seed=3, order=order)))
        passes = []
        for epoch in range(3):
            if order:
                order.begin(epoch)
            passes.append([image.tobytes() for pixels, _ in dataset for image in pixels.numpy()])
        assert any(path.is_file() for path in cache.rglob("*"))  # later epochs read from there
        return passes

    for passes in (epochs(input_pipeline.EpochOrder()), epochs(None)):
        for images in passes:
            assert sorted(images) == sorted(passes[0]) and len(images) == count
        assert passes[0] != passes[1] != passes[2]


def test_a_resumed_epoch_from_the_disk_cache_skips_its_trained_batches_and_draws_for_the_step(prepared, tmp_path):
    """Every stage at once, as a resumed GPU run reads a large dataset: the disk cache (whose images
    carry their file index), draws for the train step, and the skip of the batches already trained.
    The model gets (pixels, transforms) and targets only, whether the pass writes the cache or reads it."""
    info = dataset_info.load(prepared)
    count = info.splits["train"].num_examples
    order = input_pipeline.EpochOrder()
    dataset = input_pipeline.make_dataset(info.shard_paths(prepared, "train"), input_pipeline.InputOptions(
        input_pipeline.Images(image_size=24, interpolation="bilinear", num_classes=3, binary_mode=False,
                              num_examples=count),
        input_pipeline.Reading(batch_size=4, memory_cache_bytes=0, disk_cache_dir=str(tmp_path / "cache")),
        input_pipeline.Training(seed=3, order=order, augment_in_step=True,
                                augmentation=input_pipeline.Augmentation(flip="horizontal", rotation=0.1))))
    batches = -(-count // 4)
    for epoch, skip in ((3, 2), (4, 0)):  # the first pass writes the cache, the second reads it
        order.begin(epoch, skip)
        seen = list(dataset)
        assert len(seen) == batches - skip
        for (pixels, transforms), targets in seen:
            assert pixels.dtype == tf.uint8 and pixels.shape[1:] == (24, 24, 3)
            assert transforms.shape == (pixels.shape[0], 8) and targets.shape == (pixels.shape[0], 3)
        assert sum(int(targets.shape[0]) for _, targets in seen) == count - 4 * skip


def test_the_input_can_be_decoded_by_a_tf_data_service_on_loopback(prepared):
    """A dispatcher and a worker, real ones, on this machine: every image once per epoch, the same pixels."""
    dispatcher = tf.data.experimental.service.DispatchServer()
    worker = tf.data.experimental.service.WorkerServer(  # noqa: F841 - serves for as long as it is referenced
        tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    info = dataset_info.load(prepared)
    shards, count = info.shard_paths(prepared, "train"), info.splits["train"].num_examples

    def batches(**options):
        return input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
            input_pipeline.Images(image_size=24, interpolation="bilinear", num_classes=3, binary_mode=False,
                                  num_examples=count),
            input_pipeline.Reading(batch_size=5, **options), input_pipeline.Training()))

    def by_content(dataset):
        return sorted((pixels.tobytes(), int(target.argmax())) for images, targets in dataset
                      for pixels, target in zip(images.numpy(), targets.numpy(), strict=True))

    served = by_content(batches(data_service=dispatcher.target))
    assert len(served) == count and served == by_content(batches())


# ------------------------------------------------------------- training runs
def test_multiclass_training_writes_a_model_and_the_reference_log_lines(trained):
    epoch_lines = [line for line in trained.log if line.startswith("Epoch ")]
    assert len(epoch_lines) == 2
    assert all(" - loss: " in line and " - val_accuracy: " in line and "images/s" in line for line in epoch_lines)
    assert any("ignored for optimizer adam: initial_accumulator_value, momentum, rho" in line for line in trained.log)
    assert any(line.startswith("train: decoded training images kept in memory") for line in trained.log)
    info = json.loads(open(os.path.join(trained.model_dir, artifacts.MODEL_INFO)).read())
    assert info["class_names"] == ["circle", "square", "triangle"] and info["backbone"] == "tiny_test_net"
    assert info["hyperparameters"]["epochs"] == 2 and info["image_size"] == IMAGE_SIZE
    assert info["image_short_side"] == 40  # what prepare stored (conftest.py), for serving to downscale to
    history = trained.result.history
    assert history["val_accuracy"][trained.result.best_epoch - 1] == max(history["val_accuracy"])
    assert info["metrics"]["val_accuracy"] == max(history["val_accuracy"])
    assert os.listdir(os.path.join(trained.model_dir, artifacts.TENSORBOARD_DIR))
    assert load_keras_model(trained.model_dir).output.shape[-1] == 3


def test_binary_mode_monitors_eval_metric(binary_prepared, tiny_backbone, tmp_path):
    config = TrainingConfig(epochs=1, batch_size=8, binary_mode=True, eval_metric="auc")
    lines = []
    result = train(binary_prepared, str(tmp_path / "model"), config, train_options(tiny_backbone), log=lines.append)
    for name in ("val_auc", "val_prc", "val_precision", "val_recall", "val_true_positives"):
        assert name in result.history
    assert result.best_metrics["val_auc"] == result.history["val_auc"][0]
    assert load_keras_model(str(tmp_path / "model")).output.shape[-1] == 1
    (line,) = [line for line in lines if line.startswith("Epoch ")]
    _assert_tuning_regexes_read(line, result.history, ("loss", "accuracy", "precision", "recall", "auc", "prc"))


# The reference's tuning jobs read metrics off the epoch lines with regexes of
# this form, unanchored: the first match in a line is what they get.
def _assert_tuning_regexes_read(line: str, history: dict, names: tuple[str, ...]) -> None:
    for name in names:
        for key in (name, f"val_{name}"):
            match = re.search(key + r": ([0-9\.]+)", line)
            assert match, (key, line)
            assert float(match.group(1)) == pytest.approx(history[key][0], abs=5e-5), (key, line)


def test_epoch_lines_read_as_the_reference_prints_them(six_classes_prepared, tiny_backbone, tmp_path):
    """`- loss - accuracy - top_5_accuracy - val_loss - val_accuracy - val_top_5_accuracy`,
    from a real run on six classes, and the reference's tuning regexes read each value."""
    lines = []
    config = TrainingConfig(epochs=2, batch_size=8)
    result = train(six_classes_prepared, str(tmp_path / "model"), config, train_options(tiny_backbone),
                   log=lines.append)
    first, last = [line for line in lines if line.startswith("Epoch ")]
    keys = re.findall(r"- ([a-z_0-9]+): [0-9.]+", first)
    assert keys == ["loss", "accuracy", "top_5_accuracy", "val_loss", "val_accuracy", "val_top_5_accuracy"], first
    _assert_tuning_regexes_read(first, result.history, ("loss", "accuracy", "top_5_accuracy"))
    assert re.search(r"val_top_5_accuracy: ([0-9\.]+)", first)
    assert re.search(r" - ETA \d+:\d\d$", first) and "ETA" not in last


def test_binary_mode_on_three_classes_is_refused_before_training(prepared, tiny_backbone, tmp_path):
    with pytest.raises(HyperparameterError, match="exactly 2 classes"):
        train(prepared, str(tmp_path / "model"), TrainingConfig(binary_mode=True), train_options(tiny_backbone),
              **QUIET)
    assert not (tmp_path / "model").exists()


def test_top_layer_only_training_leaves_the_backbone_untouched(prepared, trained, tiny_backbone, tmp_path):
    before = classifier.backbone_of(load_keras_model(trained.model_dir)).get_weights()
    config = TrainingConfig(epochs=2, batch_size=8, train_only_on_top_layer=True, learning_rate=0.05)
    train(prepared, str(tmp_path / "second"), config, train_options(tiny_backbone, base_model=trained.model_dir),
          **QUIET)
    second = load_keras_model(str(tmp_path / "second"))
    after = classifier.backbone_of(second).get_weights()
    assert len(before) == len(after) == 10  # weights and batch-norm statistics alike
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(_head(trained.model_dir), _head(tmp_path / "second"))


def test_early_stopping_stops_when_nothing_improves(prepared, tiny_backbone, tmp_path):
    config = TrainingConfig(epochs=6, batch_size=8, learning_rate=0.0, early_stopping=True, early_stopping_patience=1,
                            early_stopping_min_delta=0.01)
    result = train(prepared, str(tmp_path / "model"), config, train_options(tiny_backbone), **QUIET)
    assert result.epochs_run == 2


def test_the_time_left_leaves_out_the_first_steps_tracing(monkeypatch):
    from kic.training import callbacks

    clock = iter([0.0, 20.0, *[21.0 + step for step in range(9)], 31.0])  # a 20 s first step, then 1 s steps
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    lines = []
    epoch_log = callbacks.EpochLog(3, 80, lines.append)
    epoch_log.on_epoch_begin(0)
    for step in range(10):
        epoch_log.on_train_batch_end(step)
    epoch_log.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
    # 31 s, of which 19 s tracing: 12 s an epoch, two to go.
    assert lines[0].endswith("- 31.0s - ETA 0:24"), lines[0]


def test_best_epoch_is_restored_not_the_last():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    best = BestEpoch("val_accuracy")
    best.set_model(model)
    for epoch, (value, weight) in enumerate([(0.5, 1.0), (0.9, 2.0), (0.7, 3.0)]):
        model.set_weights([np.array([[weight]]), np.zeros(1)])
        best.on_epoch_end(epoch, {"val_accuracy": value})
    best.restore_best(model)
    assert best.best_epoch == 2 and model.get_weights()[0][0, 0] == 2.0


# --------------------------------------------------------------- batch norm
def test_recalibration_sets_exact_batch_statistics():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.999)(inputs))
    batches = tf.data.Dataset.from_tensor_slices(
        (np.array([[[1.0, 10.0], [3.0, 30.0]], [[5.0, 50.0], [7.0, 70.0]]], dtype="float32"), np.zeros((2, 1))))
    assert batch_norm.recalibrate(model, batches, images=100) == 4  # both batches of 2
    layer = model.layers[-1]
    np.testing.assert_allclose(layer.moving_mean.numpy(), [4.0, 40.0], rtol=1e-6)  # mean of the batch means
    np.testing.assert_allclose(layer.moving_variance.numpy(), [1.0, 100.0], rtol=1e-5)
    assert layer.momentum == 0.999
    singles = tf.data.Dataset.from_tensor_slices(  # the same images one per batch: the sample is still 3 images
        (np.array([[[1.0, 10.0]], [[3.0, 30.0]], [[5.0, 50.0]], [[7.0, 70.0]]], dtype="float32"), np.zeros((4, 1))))
    assert batch_norm.recalibrate(model, singles, images=3) == 3
    np.testing.assert_allclose(layer.moving_mean.numpy(), [3.0, 30.0], rtol=1e-6)


def test_recalibration_reaches_batch_norm_inside_a_nested_backbone():
    inner_input = keras.Input((3,))
    projected = keras.layers.Dense(2, kernel_initializer="ones", name="project")(inner_input)
    backbone = keras.Model(inner_input, keras.layers.BatchNormalization(name="bn")(projected), name="backbone")
    outer_input = keras.Input((3,))
    model = keras.Model(outer_input, keras.layers.Dense(1)(backbone(outer_input)))
    data = np.random.default_rng(0).normal(size=(3, 4, 3)).astype("float32")  # 3 batches of 4
    batches = tf.data.Dataset.from_tensor_slices((data, np.zeros((3, 1))))
    assert batch_norm.recalibrate(model, batches, images=5) == 8  # whole batches of 4
    projections = data[:2].sum(axis=-1, keepdims=True) * np.ones(2)  # Dense with ones, no bias effect
    bias = backbone.get_layer("project").get_weights()[1]
    expected_mean = (projections + bias).mean(axis=1).mean(axis=0)
    expected_variance = projections.var(axis=1).mean(axis=0)
    layer = backbone.get_layer("bn")
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_variance, rtol=1e-5)


# ------------------------------------------------- incremental training table
def _info(classes=("a", "b"), binary=False):
    return ModelInfo(backbone="x", image_size=32, interpolation="bilinear", class_names=classes, binary_mode=binary)


@pytest.mark.parametrize("choice, base, new_head", [
    ("Auto", None, True), ("True", None, True),
    ("Auto", "ours", False), ("True", "ours", True), ("False", "ours", False),
])
def test_reinitialize_top_layer_truth_table(choice, base, new_head):
    plan = classifier.plan_head(TrainingConfig(reinitialize_top_layer=choice), _info() if base else None, ("a", "b"))
    assert plan.new_head is new_head and plan.start_from_base_model is bool(base)


def test_keeping_a_head_a_bare_backbone_does_not_have_is_an_error():
    with pytest.raises(HyperparameterError, match="pretrained backbone has none"):
        classifier.plan_head(TrainingConfig(reinitialize_top_layer="False"), None, ("a", "b"))


def test_a_different_class_set_forces_a_new_head_or_is_an_error():
    plan = classifier.plan_head(TrainingConfig(), _info(("a", "b")), ("a", "c"))
    assert plan.new_head and "class set differs" in plan.reason
    with pytest.raises(HyperparameterError, match="cannot be kept"):
        classifier.plan_head(TrainingConfig(reinitialize_top_layer="False"), _info(("a", "b")), ("a", "c"))


def test_continuing_from_our_model_keeps_or_replaces_the_head_and_keeps_its_backbone(prepared, trained, tiny_backbone,
                                                                                    tmp_path):
    # learning_rate 0 keeps every weight: a kept head must equal the earlier one. The options name
    # another backbone and size: the earlier model's own must win.
    continued = train_options("efficientnet_b0", image_size=64, base_model=trained.model_dir)
    frozen = dict(epochs=1, batch_size=8, learning_rate=0.0, dropout_rate=0.5, regularizers_l2=0.01)
    lines = []
    train(prepared, str(tmp_path / "kept"), TrainingConfig(**frozen, reinitialize_top_layer="False"), continued,
          log=lines.append)
    np.testing.assert_array_equal(_head(trained.model_dir), _head(tmp_path / "kept"))
    info = json.loads((tmp_path / "kept" / artifacts.MODEL_INFO).read_text())
    assert info["backbone"] == tiny_backbone and info["image_size"] == IMAGE_SIZE
    # The kept top layer keeps the earlier run's dropout and L2 (the defaults): said, and recorded as they are.
    assert any("warning: the earlier model's top layer is kept" in line and "dropout_rate=0.5 (it keeps 0.2)" in line
               and "regularizers_l2=0.01 (it keeps 0.0001)" in line for line in lines), lines
    assert (info["hyperparameters"]["dropout_rate"], info["hyperparameters"]["regularizers_l2"]) == \
        pytest.approx((0.2, 0.0001))

    lines.clear()
    train(prepared, str(tmp_path / "fresh"), TrainingConfig(**frozen, reinitialize_top_layer="True"),
          dataclasses.replace(continued, seed=7), log=lines.append)
    assert not np.array_equal(_head(trained.model_dir), _head(tmp_path / "fresh"))
    assert not any("warning" in line for line in lines)
    fresh = load_keras_model(str(tmp_path / "fresh"))
    assert classifier.head_settings(fresh) == pytest.approx({"dropout_rate": 0.5, "regularizers_l2": 0.01})
    info = json.loads((tmp_path / "fresh" / artifacts.MODEL_INFO).read_text())
    assert (info["hyperparameters"]["dropout_rate"], info["hyperparameters"]["regularizers_l2"]) == \
        pytest.approx((0.5, 0.01))


def test_a_corrupt_training_record_is_skipped_and_counted(prepared, tiny_backbone, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    info = dataset_info.load(str(copy))
    with tf.io.TFRecordWriter(str(copy / "train-extra.tfrecord")) as writer:
        writer.write(schema.make_example(encoded=b"\xff\xd8 not really a jpeg", height=8, width=8, label=0,
                                         source="broken.jpg", sha256="0" * 64))
    train_split = info.splits["train"]
    splits = {**info.splits, "train": dataset_info.SplitInfo(train_split.num_examples + 1,
                                                             (*train_split.shards, "train-extra.tfrecord"))}
    dataset_info.save(str(copy), dataclasses.replace(info, splits=splits))
    lines = []
    train(str(copy), str(tmp_path / "model"), TrainingConfig(epochs=1, batch_size=8), train_options(tiny_backbone),
          log=lines.append)
    assert any("skipped 1 corrupt training record" in line for line in lines)
    assert json.loads((tmp_path / "model" / artifacts.MODEL_INFO).read_text())["skipped_records"] == 1
