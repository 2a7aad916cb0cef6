"""Training: fine-tune a pretrained backbone with a new (or kept) top layer.

Read top to bottom: load the prepared dataset, build or load the model,
compile it with the configured optimizer and loss, fit with best-epoch
restore and optional early stopping, save the model and what it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings

import keras
import tensorflow as tf

from kic import artifacts, storage
from kic.config import DEFAULT_SEED, TrainingConfig
from kic.data import dataset_info, input_pipeline
from kic.errors import DataError
from kic.model import backbone_registry, backbones, classifier, loading, model_info, weights
from kic.model.model_info import ModelInfo
from kic.training import augmented, checkpoints, devices, distribution, optimizers, precision
from kic.training.callbacks import RECALIBRATION_IMAGES, BestEpoch, EpochLog, Log, SkippedRecords, Validation


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """What to train besides the 25 hyperparameters."""

    backbone: str = backbone_registry.DEFAULT_BACKBONE
    pretrained_weights: str = weights.DEFAULT  # "imagenet", "none", or a weights file path / gs:// URI
    image_size: int = 0  # 0: the backbone's native input size
    base_model: str = ""  # an earlier kic model (directory or model.tar.gz) to continue from
    seed: int = DEFAULT_SEED
    required_gpus: int = 0  # fail at once with fewer visible (what the pipeline asked the platform for)
    # Local scratch for decoded images of datasets too large for memory (empty: the temporary folder).
    scratch_dir: str = ""
    data_service: str = ""  # a tf.data service dispatcher (grpc://host:port) to decode on its workers
    recalibration_images: int = RECALIBRATION_IMAGES  # batch-norm statistics before each validation; 0: none
    precision: str = "auto"  # float32, mixed_float16, mixed_bfloat16, or auto (kic.training.precision)
    jit_compile: str = "auto"  # "true", "false", or auto: XLA on one GPU
    # Where augmentation resamples: "step" (in the train step, on its device), "host" (the input pipeline),
    # or auto: in the step when there are GPUs, whose host's CPUs would otherwise bound training.
    augment_in: str = "auto"
    # Checkpoints (kic.training.checkpoints): a run-scoped folder, local or gs:// (empty: none), resumed from
    # when it holds one; also every this many batches (0: at epoch ends only); only the chief writes.
    checkpoint_uri: str = ""
    checkpoint_every_steps: int = checkpoints.DEFAULT_EVERY_STEPS


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_dir: str
    best_epoch: int  # 1-based
    epochs_run: int
    history: dict[str, list[float]]
    best_metrics: dict[str, float]
    is_chief: bool = True  # False: a multi-worker run's other worker, whose outputs were discarded


def train(dataset_dir: str, model_dir: str, config: TrainingConfig, options: TrainOptions = TrainOptions(),
          log: Log = print) -> TrainResult:
    # First: a multi-worker strategy can only be set up before TensorFlow's runtime starts.
    spread = distribution.choose()
    log(f"train: devices: {devices.describe()}")
    devices.require_gpus(options.required_gpus)
    log(f"train: strategy: {spread.describe()}")
    if spread.num_workers > 1 and options.data_service:
        # The service splits the input among its own workers, not by training worker.
        raise distribution.ClusterError("tf_data_service cannot feed several training workers: each decodes its "
                                        "own share of the data; leave tf_data_service empty")
    earlier_model = loading.local_model_dir(options.base_model) if options.base_model else contextlib.nullcontext("")
    with earlier_model as base_dir, \
            tempfile.TemporaryDirectory(prefix="kic-decoded-", dir=options.scratch_dir or None) as cache_dir, \
            _output_dir(model_dir, spread) as output_dir:
        result = _train(dataset_dir, output_dir, config, options, log, base_dir, cache_dir, spread)
    return dataclasses.replace(result, model_dir=model_dir, is_chief=spread.is_chief)


# Where a worker that is not the chief writes what it would otherwise throw away
# (its model, history, TensorBoard logs), to look into a multi-worker run.
WORKER_OUTPUT_VARIABLE = "KIC_WORKER_OUTPUT"


@contextlib.contextmanager
def _output_dir(model_dir: str, spread: distribution.Distribution):
    """``model_dir`` for the chief. Every worker runs the same saving code (as
    Keras' multi-worker pattern has it), the others into a temporary folder
    deleted afterwards, so that replicas of one task that all run this (a
    Vertex AI multi-replica job) do not overwrite the chief's outputs."""
    if spread.is_chief:
        yield model_dir
        return
    kept = os.environ.get(WORKER_OUTPUT_VARIABLE)
    if kept:
        yield os.path.join(kept, f"worker-{spread.worker_index}")
        return
    scratch = tempfile.mkdtemp(prefix=f"kic-worker-{spread.worker_index}-")
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _log_decoded_images_home(home: str, count: int, image_size: int, cache_dir: str, data_service: str,
                             log: Log) -> None:
    size = f"{count * image_size * image_size * 3 / 1024**2:,.0f} MB"
    if home == input_pipeline.MEMORY:
        log(f"train: decoded training images kept in memory ({size})")
    elif home == input_pipeline.DISK:
        log(f"train: decoded training images kept on local disk in {cache_dir} ({size})")
    elif data_service:
        log(f"train: training images decoded every epoch by the tf.data service at {data_service}")
    else:
        log(f"train: training images decoded again every epoch: their {size} decoded fit neither in memory nor "
            f"in the free space of {cache_dir}")


def _train(dataset_dir: str, model_dir: str, config: TrainingConfig, options: TrainOptions, log: Log,
           base_dir: str, cache_dir: str, spread: distribution.Distribution) -> TrainResult:
    data = dataset_info.load(dataset_dir)
    config.check_against_data(data.num_classes)
    base_info = model_info.load(base_dir) if base_dir else None
    # Continuing from an earlier model keeps its backbone and input size.
    backbone = backbone_registry.resolve(base_info.backbone if base_info else options.backbone)
    plan = classifier.plan_head(config, base_info, data.class_names)
    image_size = base_info.image_size if base_info else (options.image_size or backbone.input_size)
    if not data.splits.get("validation") or not data.splits["validation"].num_examples:
        raise DataError("the prepared dataset has no validation split; training needs one to pick the best epoch")

    repeatable = _seed_everything(options.seed)
    log(f"train: {data.num_classes} classes, {data.splits['train'].num_examples} training and "
        f"{data.splits['validation'].num_examples} validation images, backbone {backbone.name} at "
        f"{image_size}x{image_size}, optimizer {config.optimizer}")
    if config.ignored_parameters():
        log(f"train: ignored for optimizer {config.optimizer}: {', '.join(config.ignored_parameters())}")
    log(f"train: {plan.reason}")

    decoded = tf.Variable(0, dtype=tf.int64, trainable=False)
    # Each worker reads its own share of every split; batch_size stays the global batch.
    shares = {split: input_pipeline.shard_size(data.splits[split].num_examples, spread.num_workers,
                                               spread.worker_index) for split in ("train", "validation")}
    order = input_pipeline.EpochOrder()  # each epoch's order from (seed, epoch): what a resumed run replays
    augmentation = input_pipeline.Augmentation.from_config(config)
    in_step = _augments_in_step(augmentation, options.augment_in)
    train_ds, val_ds = (
        input_pipeline.make_dataset(data.shard_paths(dataset_dir, split), input_pipeline.InputOptions(
            input_pipeline.Images(image_size=image_size, interpolation=config.image_resize_interpolation,
                                  num_classes=data.num_classes, binary_mode=config.binary_mode,
                                  num_examples=shares[split], short_side=data.image_short_side),
            input_pipeline.Reading(batch_size=config.batch_size, disk_cache_dir=cache_dir,
                                   data_service=options.data_service, deterministic=repeatable,
                                   num_workers=spread.num_workers, worker_index=spread.worker_index,
                                   decoded=decoded if split == "train" else None),
            input_pipeline.Training(seed=options.seed, augmentation=augmentation, order=order,
                                    augment_in_step=in_step) if split == "train" else None))
        for split in ("train", "validation"))
    home = input_pipeline.decoded_images_home(shares["train"], image_size, disk_cache_dir=cache_dir,
                                              data_service=options.data_service)
    _log_decoded_images_home(home, shares["train"], image_size, cache_dir, options.data_service, log)

    model, trained, hyperparameters, metrics = _compiled_model(config, options, backbone, image_size,
                                                               data.num_classes, plan, base_dir, spread,
                                                               augmentation if in_step else None, log)
    if augmentation is not None and augmentation.changes_anything:
        log(f"train: augmentation resampled {'in the train step' if in_step else 'by the input pipeline'}")

    best = BestEpoch(config.monitored_metric)
    skipped = SkippedRecords(decoded, shares["train"], log)
    epoch_log = EpochLog(config.epochs, data.splits["train"].num_examples, log, [metric.name for metric in metrics])
    early_stopping = None
    if config.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=config.monitored_metric, mode="max", patience=config.early_stopping_patience,
            min_delta=config.early_stopping_min_delta)
    checkpointing = _checkpointing(config, options, hyperparameters, data, backbone.name, image_size, order,
                                   best, early_stopping, skipped, spread.is_chief, log)
    # Batch-norm statistics are recalibrated on augmented images, as the step trains on them.
    recalibration_ds = augmented.warped_on_host(train_ds, augmentation) if in_step else train_ds
    callbacks = [checkpointing.epoch_input, skipped, Validation(val_ds, recalibration_ds, options.recalibration_images),
                 best, epoch_log, *([early_stopping] if early_stopping else []),
                 checkpointing,  # after the callbacks whose state it saves
                 keras.callbacks.TensorBoard(os.path.join(model_dir, artifacts.TENSORBOARD_DIR),
                                             write_graph=False, profile_batch=0)]
    with trained.distribute_strategy.scope():  # the optimizer's variables are made there
        initial_epoch = checkpointing.resume(trained)
    if initial_epoch > 0 and not checkpointing.finished and home == input_pipeline.DISK:
        log(f"train: writing the disk cache before resuming at epoch {initial_epoch + 1}, so that the epoch "
            "reads its images in the order the interrupted run did")
        input_pipeline.write_disk_cache(train_ds, order)
    for first, end in [] if checkpointing.finished else checkpointing.fits(initial_epoch):
        with warnings.catch_warnings():
            # The input is finite and shuffled by tf.data; Keras warns about both.
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            trained.fit(train_ds, epochs=end, initial_epoch=first, callbacks=callbacks, shuffle=False, verbose=0)
        if checkpointing.finished:  # early stopping
            break
    best.restore_best(trained)  # the classifier's variables
    history = checkpointing.history  # every epoch's, those before a resume included
    log(f"train: best epoch {best.best_epoch} by {config.monitored_metric} = {best.best_value:.4f}"
        f"{' (early stopping)' if len(history['loss']) < config.epochs else ''}")

    info = ModelInfo(backbone=backbone.name, image_size=image_size,
                     interpolation=config.image_resize_interpolation, class_names=data.class_names,
                     binary_mode=config.binary_mode, hyperparameters=hyperparameters,
                     data_fingerprint=data.fingerprint,
                     metrics={key: values[best.best_epoch - 1] for key, values in history.items()},
                     skipped_records=skipped.count, image_short_side=data.image_short_side,
                     images_per_class=dataset_info.images_per_class(dataset_dir))
    os.makedirs(model_dir, exist_ok=True)
    # Saved computing in float32, whatever the training precision: what evaluation, serving (often on CPUs,
    # where half precision is slow) and later training read; the weights are float32 either way.
    precision.recast(model, precision.FLOAT32).save(os.path.join(model_dir, artifacts.KERAS_MODEL))
    model_info.save(model_dir, info)
    storage.write_text(os.path.join(model_dir, artifacts.TRAINING_HISTORY), json.dumps(history, indent=2))
    return TrainResult(model_dir=model_dir, best_epoch=best.best_epoch, epochs_run=len(history["loss"]),
                       history=history, best_metrics=info.metrics)


def _checkpointing(config, options, hyperparameters, data, backbone, image_size, order, best, early_stopping,
                   skipped, writer: bool, log) -> checkpoints.Checkpointing:
    store = None
    if options.checkpoint_uri:
        # What makes a checkpoint this run's: a checkpoint from anything else is refused.
        identity = {"hyperparameters": hyperparameters, "backbone": backbone, "image_size": image_size,
                    "pretrained_weights": options.pretrained_weights, "base_model": options.base_model,
                    "seed": options.seed, "recalibration_images": options.recalibration_images,
                    "data_fingerprint": data.fingerprint, "class_names": list(data.class_names)}
        store = checkpoints.Store(options.checkpoint_uri, identity, writer=writer)
        every = options.checkpoint_every_steps if not options.data_service else 0
        log(f"train: checkpoints in {options.checkpoint_uri} at each epoch's end"
            + (f" and every {every} steps" if every else "")
            + ("" if writer else " (written by the chief)"))
    return checkpoints.Checkpointing(store, epochs=config.epochs, every_steps=options.checkpoint_every_steps,
                                     best=best, early_stopping=early_stopping, skipped=skipped,
                                     order=None if options.data_service else order, log=log)


# ----------------------------------------------------------------- model
def _augments_in_step(augmentation: input_pipeline.Augmentation | None, where: str) -> bool:
    if augmentation is None or not augmentation.changes_anything:
        return False
    if where == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return where == "step"


def _compiled_model(config, options, backbone, image_size, num_classes, plan, base_dir,
                    spread: distribution.Distribution, augmentation: input_pipeline.Augmentation | None,
                    log: Log) -> tuple[keras.Model, keras.Model, dict, list]:
    """The model, built in the strategy's scope and the precision's policy;
    the model compiled and fitted (the same, or, given an ``augmentation``
    to run in the train step, it wrapped in kic.training.augmented's
    AugmentInStep: the same variables); the hyperparameters as built, and
    the metrics."""
    choice = precision.resolve(options.precision, options.jit_compile, precision.Devices.visible(),
                               replicas=spread.num_replicas)
    with spread.strategy.scope(), precision.policy(choice.precision):
        model = _build_model(config, options, backbone, image_size, num_classes, plan, base_dir)
        model = precision.recast(model, choice.precision, keep_float32=(classifier.DENSE_LAYER,))
        hyperparameters = _as_built(config, model, log)
        classifier.set_trainable(model, train_only_top_layer=config.train_only_on_top_layer)
        metrics = _metrics(config, num_classes)
        optimizer = precision.with_loss_scaling(optimizers.build_optimizer(config), choice.precision)
        trained = augmented.AugmentInStep(model, augmentation) if augmentation is not None else model
        trained.compile(optimizer=optimizer, loss=_loss(config), metrics=metrics, jit_compile=choice.jit_compile)
    if spread.num_workers > 1:
        distribution.fix_keras_for_multi_worker(trained)
    if choice.jit_compile and not trained.jit_compile:  # Keras' own call
        choice = dataclasses.replace(choice, jit_compile=False, reason="Keras turned it off: deterministic kernels "
                                                                       "(a repeatable CPU run), or a layer XLA lacks")
    log(f"train: {choice.describe()}")
    return model, trained, hyperparameters, metrics


def _build_model(config, options, backbone, image_size, num_classes, plan, base_dir) -> keras.Model:
    if plan.start_from_base_model:
        model = loading.load_keras_model(base_dir)
        if plan.new_head:
            model = classifier.add_head(classifier.cut_head(model), num_classes=num_classes,
                                        config=config, seed=options.seed)
        return model
    extractor = backbones.build_feature_extractor(backbone, image_size=image_size,
                                                  weights=options.pretrained_weights)
    return classifier.build_new(extractor, image_size=image_size, num_classes=num_classes,
                                config=config, seed=options.seed)


def _as_built(config: TrainingConfig, model: keras.Model, log: Log) -> dict:
    """The hyperparameters as the model has them: a top layer kept from an
    earlier model keeps its own dropout rate and L2 factor, whatever was asked
    (the log says which requests were ignored)."""
    hyperparameters = config.to_dict()
    actual = classifier.head_settings(model)
    ignored = [f"{name}={hyperparameters[name]:g} (it keeps {value:g})" for name, value in actual.items()
               if not math.isclose(value, hyperparameters[name], rel_tol=1e-6, abs_tol=1e-12)]
    if ignored:
        log("train: warning: the earlier model's top layer is kept, so these were ignored: " + ", ".join(ignored)
            + "; set reinitialize_top_layer=True for a new top layer with them")
    return {**hyperparameters, **actual}


# ------------------------------------------------------- loss and metrics
def _loss(config: TrainingConfig) -> keras.losses.Loss:
    if config.binary_mode:
        return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)


# The reference reports top-5 accuracy (``top_5_accuracy``, ``val_top_5_accuracy``)
# when there are more classes than that.
TOP_K_ACCURACY = 5


def _metrics(config: TrainingConfig, num_classes: int) -> list[keras.metrics.Metric]:
    if not config.binary_mode:
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if num_classes > TOP_K_ACCURACY:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=TOP_K_ACCURACY,
                                                                 name=f"top_{TOP_K_ACCURACY}_accuracy"))
        return metrics
    # The model emits a logit: threshold 0 is probability 0.5.
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
        keras.metrics.Precision(thresholds=0.0, name="precision"),
        keras.metrics.Recall(thresholds=0.0, name="recall"),
        keras.metrics.AUC(from_logits=True, name="auc"),
        keras.metrics.AUC(curve="PR", from_logits=True, name="prc"),
        keras.metrics.TruePositives(thresholds=0.0, name="true_positives"),
        keras.metrics.FalsePositives(thresholds=0.0, name="false_positives"),
        keras.metrics.TrueNegatives(thresholds=0.0, name="true_negatives"),
        keras.metrics.FalseNegatives(thresholds=0.0, name="false_negatives"),
    ]


# ------------------------------------------------------------ environment
def _seed_everything(seed: int) -> bool:
    """Seeds everything; returns whether the run is repeatable: on CPU,
    deterministic kernels (and input order) cost little and make it so."""
    keras.utils.set_random_seed(seed)
    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.experimental.enable_op_determinism()
    return True

