"""Checkpoints (kic.training.checkpoints): commit-last writes, refusal of
another configuration's checkpoint, gs:// through the emulator, and a run
interrupted mid-epoch that resumes to the same model as an uninterrupted one."""

import json
import os

import numpy as np
import pytest
from tiny_backbone import train_options

from kic import storage
from kic.config import TrainingConfig
from kic.training import checkpoints, train
from kic.training.checkpoints import CheckpointMismatchError, Progress, Store

IDENTITY = {"hyperparameters": {"learning_rate": 0.01, "epochs": 3}, "backbone": "tiny", "data_fingerprint": "abc"}
ARRAYS = {"model": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(1.5)],
          "optimizer": [np.int64(7), np.ones(3)]}


def _files(root: str) -> list[str]:
    prefix = root.rstrip("/") + "/"
    return sorted(path.removeprefix(prefix) for path in storage.list_files(root))


def test_a_checkpoint_round_trips_and_only_the_latest_is_kept(tmp_path):
    store = Store(str(tmp_path), IDENTITY)
    assert store.latest() is None
    store.save(Progress(epoch=1, step=0, history={"loss": [0.9]}, best_value=0.5, best_epoch=1), ARRAYS)
    store.save(Progress(epoch=1, step=4, history={"loss": [0.9]}, best_value=0.5, best_epoch=1), ARRAYS)
    saved = store.latest()
    assert (saved.progress.epoch, saved.progress.step, saved.progress.history) == (1, 4, {"loss": [0.9]})
    for group, values in ARRAYS.items():
        for restored, value in zip(saved.arrays[group], values, strict=True):
            np.testing.assert_array_equal(restored, value)
    assert _files(str(tmp_path)) == [f"ckpt-00001-000000004/{name}" for name in ("COMMITTED", "state.json",
                                                                                  "variables.npz")]


def test_a_checkpoint_without_its_marker_is_ignored(tmp_path):
    store = Store(str(tmp_path), IDENTITY)
    store.save(Progress(epoch=2), ARRAYS)
    # A later checkpoint cut short by a preemption: everything but the marker written last.
    partial = tmp_path / "ckpt-00003-000000000"
    partial.mkdir()
    (partial / "variables.npz").write_bytes(b"truncated")
    (partial / "state.json").write_text(json.dumps({"identity": {}, "progress": {"epoch": 3}}))
    assert store.latest().name == "ckpt-00002-000000000"
    store.save(Progress(epoch=3, step=0), ARRAYS)  # the next commit clears what was left
    assert {name.split("/")[0] for name in _files(str(tmp_path))} == {"ckpt-00003-000000000"}
    assert store.latest().progress.epoch == 3


def test_a_checkpoint_of_another_configuration_is_refused_with_the_differences(tmp_path):
    Store(str(tmp_path), IDENTITY).save(Progress(epoch=1), ARRAYS)
    other = {**IDENTITY, "hyperparameters": {"learning_rate": 0.1, "epochs": 3}, "data_fingerprint": "def"}
    with pytest.raises(CheckpointMismatchError) as raised:
        Store(str(tmp_path), other).latest()
    message = str(raised.value)
    assert "another training configuration" in message and str(tmp_path) in message
    assert "data_fingerprint is 'abc' there, 'def' now" in message
    assert "0.01" in message and "0.1" in message


def test_only_the_writer_writes(tmp_path):
    assert Store(str(tmp_path / "c"), IDENTITY, writer=False).save(Progress(epoch=1), ARRAYS) is None
    assert not os.path.exists(tmp_path / "c")


def test_checkpoints_on_gcs(gcs_emulator):
    root = f"{gcs_emulator.new_bucket()}/run-1/train/checkpoints"
    store = Store(root, IDENTITY)
    store.save(Progress(epoch=1), ARRAYS)
    storage.write_bytes(f"{root}/ckpt-00002-000000000/variables.npz", b"partial")  # no marker
    store.save(Progress(epoch=1, step=3), ARRAYS)
    saved = Store(root, IDENTITY).latest()
    assert (saved.name, saved.progress.step) == ("ckpt-00001-000000003", 3)
    np.testing.assert_array_equal(saved.arrays["model"][0], ARRAYS["model"][0])
    assert {name.split("/")[0] for name in _files(root)} == {"ckpt-00001-000000003"}


def test_the_default_location_is_next_to_the_model_output(tmp_path):
    assert checkpoints.default_location("gs://b/root/123/job-9/train_456/model", "/gcs/b/root/123/job-9/"
                                        "train_456/model") == "gs://b/root/123/job-9/train_456/checkpoints"
    model = str(tmp_path / "run" / "train" / "model")
    assert checkpoints.default_location(model, model) == str(tmp_path / "run" / "train" / "checkpoints")
    assert checkpoints.default_location("minio://mlpipeline/v2/artifacts/p/r/train/model", "/minio/x") == ""


class Preempted(Exception):
    pass


def test_a_run_interrupted_mid_epoch_resumes_to_the_model_of_an_uninterrupted_one(prepared, tiny_backbone,
                                                                                  tmp_path):
    # 24 training images in batches of 8: 3 steps an epoch, a checkpoint every 2, augmentation on.
    config = TrainingConfig(epochs=3, batch_size=8, learning_rate=0.01, augmentation=True,
                            augmentation_random_rotation=0.1)
    whole = train(prepared, str(tmp_path / "whole"), config, train_options(tiny_backbone), log=lambda _: None)

    options = train_options(tiny_backbone, checkpoint_uri=str(tmp_path / "checkpoints"), checkpoint_every_steps=2)

    def preempted_after_epoch_2(line: str) -> None:
        if line.startswith("Epoch 2/3"):  # before the end of epoch 2 is saved: the latest is its step 2
            raise Preempted

    with pytest.raises(Preempted):
        train(prepared, str(tmp_path / "first"), config, options, log=preempted_after_epoch_2)
    lines: list[str] = []
    resumed = train(prepared, str(tmp_path / "resumed"), config, options, log=lines.append)

    assert any(line.endswith("at epoch 2 (step 2)") and line.startswith("train: resuming from checkpoint")
               for line in lines), lines
    assert [line.split()[1] for line in lines if line.startswith("Epoch ")] == ["2/3", "3/3"]
    assert resumed.best_epoch == whole.best_epoch and resumed.epochs_run == 3
    for key, values in whole.history.items():
        np.testing.assert_allclose(resumed.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
    from kic.model.loading import load_keras_model

    for a, b in zip(load_keras_model(str(tmp_path / "whole")).get_weights(),
                    load_keras_model(str(tmp_path / "resumed")).get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The run's last checkpoint stays: a retry after training restores the trained model at once.
    finished: list[str] = []
    train(prepared, str(tmp_path / "again"), config, options, log=finished.append)
    assert not [line for line in finished if line.startswith("Epoch ")]
    assert any("training had ended after epoch 3" in line for line in finished)
    with pytest.raises(CheckpointMismatchError, match="learning_rate"):
        train(prepared, str(tmp_path / "other"), TrainingConfig(epochs=3, batch_size=8, learning_rate=0.02,
                                                                augmentation=True, augmentation_random_rotation=0.1),
              options, log=lambda _: None)
