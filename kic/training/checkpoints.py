"""Checkpoints of a training run, so that a preempted train resumes where it was.

A checkpoint holds everything the rest of the run depends on: every variable
of the model (weights, batch-norm statistics, dropout's random state), the
optimizer's (its moments and step count), the training metrics' running sums
(for a checkpoint taken mid-epoch), the best epoch's weights and metric, the
early-stopping state, the history so far, and where the run was: the epoch
and the batches of it already trained. The input's order is a function of the
seed and the epoch (``kic.data.input_pipeline.EpochOrder``), so that is all a
resumed run needs to see the same batches as an uninterrupted one: it skips
the batches of the interrupted epoch it had trained and goes on.

Layout under the checkpoint folder (local, gs:// or s3://)::

    ckpt-EEEEE-SSSSSSSSS/variables.npz   the arrays
    ckpt-EEEEE-SSSSSSSSS/state.json      the rest, and who wrote it
    ckpt-EEEEE-SSSSSSSSS/COMMITTED       written last

(EEEEE the 0-based epoch in progress, SSSSSSSSS its batches trained; the end of
epoch e is e+1, 0). A checkpoint counts only once its COMMITTED marker exists:
one cut short by a preemption is ignored, and the previous one is only removed
after the next is committed. Only the latest is kept; after a successful run
too, so that a retry of a task that failed after training (writing its
outputs, say) restores the trained model instead of training again.

``state.json`` names the configuration that wrote it (hyperparameters,
backbone, image size, weights, seed, the prepared data's fingerprint): a
checkpoint from another one is refused with the differences, never used.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from kic import artifacts, config, storage
from kic.errors import UserError

FORMAT = 1
ARRAYS, STATE, MARKER = "variables.npz", "state.json", "COMMITTED"
PREFIX = artifacts.CHECKPOINT_PREFIX
DEFAULT_EVERY_STEPS = config.DEFAULT_CHECKPOINT_EVERY_STEPS


class CheckpointMismatchError(UserError):
    """A checkpoint in the folder was written by another configuration or dataset."""


@dataclasses.dataclass
class Progress:
    """A training run's state besides its variables."""

    epoch: int = 0  # 0-based: the epoch in progress (or the next one, at step 0)
    step: int = 0  # batches of that epoch already trained
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    best_value: float = -float("inf")
    best_epoch: int = 0  # 1-based; 0: none yet
    early_stopping: dict[str, Any] = dataclasses.field(default_factory=dict)  # wait, best, best_epoch
    stopped: bool = False  # early stopping ended the run
    skipped_records: int = 0


@dataclasses.dataclass
class Saved:
    progress: Progress
    arrays: dict[str, list[np.ndarray]]  # "model", "optimizer", "metrics", "best"
    name: str


def default_location(model_uri: str, model_path: str) -> str:
    """Where train keeps its checkpoints when no checkpoint_uri is given: next
    to its model output, in the folder the platform gives this task in this
    run. Kubeflow Pipelines fixes a task's output URIs once, before its
    first attempt, and every retry of it gets the same; Vertex AI's include
    the task's id, the same on a retry; a new run gets new ones. Only a
    gs:// or s3:// URI survives the machine (a local path does on this
    machine, where kfp.local runs). Kubeflow Pipelines' own store
    (``minio://BUCKET/...``) is one when kic can reach it
    (``storage.can_reach_minio``: train finds the cluster's); elsewhere kic
    cannot write and returns "" (no checkpoints)."""
    if model_uri.startswith(storage.MINIO_SCHEME) and not storage.can_reach_minio():
        return ""
    if model_uri and storage.is_remote(model_uri):
        return storage.join(posixpath.dirname(model_uri.rstrip("/")), artifacts.CHECKPOINTS_DIR)
    if model_uri and "://" in model_uri:
        return ""
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), artifacts.CHECKPOINTS_DIR)


class Store:
    """The checkpoints of one training configuration in one folder."""

    def __init__(self, uri: str, identity: Mapping[str, Any], *, writer: bool = True):
        self.uri = uri
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True))  # as JSON reads it back
        self.writer = writer

    def latest(self) -> Saved | None:
        """The latest committed checkpoint; CheckpointMismatchError when it was
        written by another configuration."""
        committed = self._committed()
        if not committed:
            return None
        name = committed[-1]
        folder = storage.join(self.uri, name)
        state = json.loads(storage.read_text(storage.join(folder, STATE)))
        differences = _differences(state.get("identity", {}), {**self.identity, "format": FORMAT})
        if differences:
            raise CheckpointMismatchError(
                f"the checkpoint {folder} was written by another training configuration, so it is not used: "
                + "; ".join(differences) + ". Resume with the same settings and prepared data, or give this run "
                "its own checkpoint_uri (or delete that folder; kic run: run without --resume) to start afresh")
        with np.load(io.BytesIO(storage.read_bytes(storage.join(folder, ARRAYS)))) as npz:
            arrays: dict[str, list[np.ndarray]] = {}
            for key in sorted(npz.files):
                group, _ = key.split("/")
                arrays.setdefault(group, []).append(npz[key])
        fields = {field.name for field in dataclasses.fields(Progress)}
        return Saved(Progress(**{key: value for key, value in state["progress"].items() if key in fields}),
                     arrays, name)

    def save(self, progress: Progress, arrays: Mapping[str, list[np.ndarray]]) -> str | None:
        """Writes a checkpoint (only the writer does), commits it, then removes the others."""
        if not self.writer:
            return None
        name = f"{PREFIX}{progress.epoch:05d}-{progress.step:09d}"
        folder = storage.join(self.uri, name)
        storage.makedirs(folder)
        with tempfile.TemporaryDirectory(prefix="kic-checkpoint-") as scratch:
            local = os.path.join(scratch, ARRAYS)
            np.savez(local, **{f"{group}/{index:06d}": value for group, values in arrays.items()
                               for index, value in enumerate(values)})
            storage.copy_file(local, storage.join(folder, ARRAYS))
        storage.write_text(storage.join(folder, STATE), json.dumps(
            {"identity": {**self.identity, "format": FORMAT}, "progress": dataclasses.asdict(progress)}, indent=1))
        storage.write_text(storage.join(folder, MARKER), name)  # last: now the checkpoint counts
        for other in self._folders() - {name}:
            storage.remove_tree(storage.join(self.uri, other))
        return name

    def _folders(self) -> set[str]:
        return {name for name, _ in self._files()}

    def _committed(self) -> list[str]:
        return sorted(name for name, file in self._files() if file == MARKER)

    def _files(self) -> list[tuple[str, str]]:
        if not storage.exists(self.uri):
            return []
        prefix = self.uri.rstrip("/") + "/"
        found = []
        for path in storage.list_files(self.uri):
            relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.uri)
            parts = relative.replace(os.sep, "/").split("/")
            if len(parts) == 2 and parts[0].startswith(PREFIX):
                found.append((parts[0], parts[1]))
        return found


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    return [f"{key} is {saved.get(key)!r} there, {current.get(key)!r} now" for key in sorted({*saved, *current})
            if saved.get(key) != current.get(key)]


# --------------------------------------------------------- the Keras side
def model_arrays(model: keras.Model, best_weights: list[np.ndarray] | None) -> dict[str, list[np.ndarray]]:
    arrays = {"model": [np.asarray(variable.numpy()) for variable in model.variables],
              "optimizer": [np.asarray(variable.numpy()) for variable in model.optimizer.variables],
              "metrics": [np.asarray(variable.numpy()) for variable in model.metrics_variables]}
    if best_weights is not None:
        arrays["best"] = [np.asarray(value) for value in best_weights]
    return arrays


def assign(variables, values: list[np.ndarray], what: str) -> None:
    """Sets ``variables`` to ``values``, refusing a checkpoint whose variables are not these."""
    variables = list(variables)
    shapes = [tuple(variable.shape) for variable in variables]
    if shapes != [tuple(value.shape) for value in values]:
        raise CheckpointMismatchError(f"the checkpoint's {what} variables are not this model's "
                                      f"({len(values)} saved, {len(variables)} here, or of other shapes)")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


class Checkpointing(keras.callbacks.Callback):
    """Writes a checkpoint at each epoch's end and every ``every_steps``
    batches (0: at epoch ends only), restores a saved one into the run, and
    keeps the history. Goes after the callbacks whose state it saves
    (``best``: kic.training.callbacks.BestEpoch, ``early_stopping``), so that
    at an epoch's end it sees their verdict on that epoch. ``order``
    (an EpochOrder) is told each epoch and the batches to skip; without one
    (a tf.data service's input) only epoch ends are saved."""

    def __init__(self, store: Store | None, *, epochs: int, every_steps: int, best, early_stopping=None,
                 skipped=None, order=None, log=print):
        super().__init__()
        self.store, self.epochs, self.best, self.early_stopping = store, epochs, best, early_stopping
        self.skipped, self.order, self.log = skipped, order, log
        self.every_steps = every_steps if order is not None else 0
        self.progress = Progress()
        self._resumed: Saved | None = None
        self._steps = 0
        self._epoch_steps = 0  # batches in an epoch, once one has ended
        self._skipped_metrics: list[np.ndarray] | None = None

    @property
    def history(self) -> dict[str, list[float]]:
        return self.progress.history

    def resume(self, model: keras.Model) -> int:
        """Restores the latest checkpoint, if any, into ``model`` (compiled)
        and returns the epoch to start at (0: from the start)."""
        saved = self.store.latest() if self.store is not None else None
        if saved is None:
            return 0
        self._resumed, self.progress = saved, saved.progress
        model.optimizer.build(model.trainable_variables)
        assign(model.variables, saved.arrays.get("model", []), "model")
        assign(model.optimizer.variables, saved.arrays.get("optimizer", []), "optimizer")
        # Here, not when a fit begins: a run restored from a finished checkpoint fits no more.
        self.best.best_value, self.best.best_epoch = saved.progress.best_value, saved.progress.best_epoch
        self.best.best_weights = saved.arrays.get("best")
        if self.skipped is not None:
            self.skipped.count = saved.progress.skipped_records
        at = f"epoch {saved.progress.epoch + 1}" + (f" (step {saved.progress.step})" if saved.progress.step else "")
        if self.finished:
            self.log(f"train: resuming from checkpoint {self.store.uri}/{saved.name}: training had ended after "
                     f"epoch {saved.progress.epoch}{' (early stopping)' if saved.progress.stopped else ''}")
        else:
            self.log(f"train: resuming from checkpoint {self.store.uri}/{saved.name} at {at}")
        return saved.progress.epoch

    @property
    def finished(self) -> bool:
        return self.progress.stopped or self.progress.epoch >= self.epochs

    def fits(self, first_epoch: int) -> list[tuple[int, int]]:
        """The (initial_epoch, epochs) of the fit calls that train from
        ``first_epoch`` on: Keras takes the length of a fit's first epoch for
        all of them, so an epoch resumed mid-way is a fit of its own."""
        if self.skip_for(first_epoch) and first_epoch + 1 < self.epochs:
            return [(first_epoch, first_epoch + 1), (first_epoch + 1, self.epochs)]
        return [(first_epoch, self.epochs)]

    def on_train_begin(self, logs=None):
        # At every fit of the training: EarlyStopping starts each fit afresh.
        if self.early_stopping is not None and self.progress.early_stopping:
            for key, value in self.progress.early_stopping.items():
                setattr(self.early_stopping, key, value)

    def skip_for(self, epoch: int) -> int:
        """The batches of ``epoch`` trained before the checkpoint this run resumed from."""
        if self._resumed is not None and epoch == self._resumed.progress.epoch:
            return self._resumed.progress.step
        return 0

    @property
    def epoch_input(self) -> keras.callbacks.Callback:
        """The callback that tells the input (``order``) each epoch; it goes first."""
        return _EpochInput(self.order, self)

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = self.skip_for(epoch)
        if self._steps:
            self._skipped_metrics = self._resumed.arrays.get("metrics", [])

    def on_train_batch_end(self, batch, logs=None):
        if self._skipped_metrics is not None:
            # The training metrics' sums over the batches skipped. Keras builds the metrics in the first
            # step; each metric kic compiles keeps sums and counts, so adding them is the epoch's state.
            variables = list(self.model.metrics_variables)
            assign(variables, [variable.numpy() + value for variable, value in
                               zip(variables, self._skipped_metrics, strict=False)], "metric")
            self._skipped_metrics = None
        self._steps += 1
        # Not at an epoch's last batch: resuming there would leave the epoch no batch to train.
        if self.every_steps and self._steps % self.every_steps == 0 and self._steps != self._epoch_steps:
            self._save(dataclasses.replace(self.progress, epoch=self.progress.epoch, step=self._steps))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            self.progress.history.setdefault(key, []).append(float(value))
        self.progress.epoch, self.progress.step, self._epoch_steps = epoch + 1, 0, self._steps
        self.progress.best_value, self.progress.best_epoch = float(self.best.best_value), self.best.best_epoch
        self.progress.stopped = bool(self.model.stop_training)
        if self.early_stopping is not None:
            self.progress.early_stopping = {
                "wait": int(self.early_stopping.wait), "best_epoch": int(self.early_stopping.best_epoch),
                "best": None if self.early_stopping.best is None else float(self.early_stopping.best)}
        if self.skipped is not None:
            self.progress.skipped_records = self.skipped.count
        self._resumed = None
        self._save(self.progress)

    def _save(self, progress: Progress) -> None:
        if self.store is not None:
            # Every worker reads the variables, though only the writer writes: under a multi-worker
            # strategy reading a metric's variable is a collective op that all workers must join.
            self.store.save(progress, model_arrays(self.model, self.best.best_weights))


class _EpochInput(keras.callbacks.Callback):
    """First of the callbacks: the input's epoch and batches to skip are set
    before Keras starts the epoch's pass, and the skip is undone before the
    other callbacks (batch-norm recalibration) read the input again."""

    def __init__(self, order, checkpointing: Checkpointing):
        super().__init__()
        self.order, self.checkpointing = order, checkpointing

    def on_epoch_begin(self, epoch, logs=None):
        if self.order is not None:
            self.order.begin(epoch, self.checkpointing.skip_for(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if self.order is not None:
            self.order.end()
