"""Checkpoints (kic.training.checkpoints): commit-last writes, refusal of
another configuration's checkpoint, gs:// through the emulator, and a run
interrupted mid-epoch that resumes to the same model as an uninterrupted one."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tiny_backbone import train_options

from kic import storage
from kic.config import TrainingConfig
from kic.data import input_pipeline
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


@pytest.mark.parametrize("server", ["gcs_emulator", "s3_server"])
def test_checkpoints_on_object_storage(server, request):
    root = f"{request.getfixturevalue(server).new_bucket()}/run-1/train/checkpoints"
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


def test_each_epochs_input_is_the_same_whatever_ran_before(prepared):
    """What a resumed run relies on: an epoch's batches, augmentation included, depend on the seed and
    the epoch alone, and the epoch's own pass skips the batches it is told to (the next pass does not)."""
    import hashlib

    from kic.data import dataset_info, input_pipeline

    data = dataset_info.load(prepared)
    tf.config.experimental.enable_op_determinism()  # as train does on CPU: random draws in a repeatable order

    def passes(epochs: list[tuple[int, int]]) -> list[list[str]]:
        order = input_pipeline.EpochOrder()
        batches = input_pipeline.make_dataset(data.shard_paths(prepared, "train"), input_pipeline.InputOptions(
            input_pipeline.Images(image_size=32, interpolation="bilinear", num_classes=data.num_classes,
                                  binary_mode=False, num_examples=24),
            input_pipeline.Reading(batch_size=8),
            input_pipeline.Training(seed=1, order=order, augmentation=input_pipeline.Augmentation(
                flip="horizontal", rotation=0.1, zoom=0.1))))
        seen = []
        for epoch, skip in epochs:
            order.begin(epoch, skip)
            seen.append([hashlib.sha1(pixels.numpy().tobytes()).hexdigest() for pixels, _ in batches])
            order.end()
            seen.append([hashlib.sha1(pixels.numpy().tobytes()).hexdigest() for pixels, _ in batches])
        return seen

    whole = passes([(0, 0), (1, 0), (2, 0)])
    resumed = passes([(1, 2), (2, 0)])
    assert len(whole[2]) == 3 and whole[2] != whole[4]  # epochs differ
    assert resumed[0] == whole[2][2:]  # the rest of epoch 2, as augmented in an uninterrupted run
    assert resumed[1:] == whole[3:]  # then everything as it was


class Preempted(Exception):
    pass


@pytest.mark.parametrize("home", ["memory", "disk"])
def test_a_run_interrupted_mid_epoch_resumes_to_the_model_of_an_uninterrupted_one(prepared, tiny_backbone, trained,
                                                                                  tmp_path, monkeypatch, home):
    """On the disk cache (large datasets) too: a resumed run's new machine has no cache, and the pass
    that writes one gives the images in the first epoch's order; the resumed run writes it first, so
    the interrupted epoch trains on the images it did."""
    # The session's trained model: 2 epochs of 3 steps (24 images, batches of 8); a checkpoint every 2 steps.
    config = TrainingConfig(epochs=2, batch_size=8, learning_rate=0.01)
    options = train_options(tiny_backbone, checkpoint_uri=str(tmp_path / "checkpoints"), checkpoint_every_steps=2)
    if home == "disk":
        monkeypatch.setattr(input_pipeline, "DEFAULT_MEMORY_CACHE_BYTES", 0)
        whole_lines: list[str] = []
        whole_dir = str(tmp_path / "whole")
        whole = train(prepared, whole_dir, config, train_options(tiny_backbone), log=whole_lines.append)
        assert any("kept on local disk" in line for line in whole_lines), whole_lines
    else:
        whole, whole_dir = trained.result, trained.model_dir

    # On disk, in the second epoch: the first epoch's pass writes the cache, and its order is the same anyway.
    interrupted = 2 if home == "disk" else 1

    def preempted_at_the_end_of_an_epoch(line: str) -> None:
        if line.startswith(f"Epoch {interrupted}/2"):  # before the epoch's end is saved: the latest is its step 2
            raise Preempted

    with pytest.raises(Preempted):
        train(prepared, str(tmp_path / "first"), config, options, log=preempted_at_the_end_of_an_epoch)
    lines: list[str] = []
    resumed = train(prepared, str(tmp_path / "resumed"), config, options, log=lines.append)

    assert any(line.startswith("train: resuming from checkpoint")
               and line.endswith(f"at epoch {interrupted} (step 2)") for line in lines), lines
    assert [line.split()[1] for line in lines if line.startswith("Epoch ")] == [f"{epoch}/2"
                                                                               for epoch in range(interrupted, 3)]
    assert (home == "disk") == any("writing the disk cache before resuming" in line for line in lines), lines
    assert (resumed.best_epoch, resumed.epochs_run) == (whole.best_epoch, 2)
    for key, values in whole.history.items():
        np.testing.assert_allclose(resumed.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
    from kic.model.loading import load_keras_model

    for a, b in zip(load_keras_model(whole_dir).get_weights(),
                    load_keras_model(str(tmp_path / "resumed")).get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The last checkpoint stays: a retry after training restores the trained model without training again.
    again: list[str] = []
    retried = train(prepared, str(tmp_path / "again"), config, options, log=again.append)
    assert not [line for line in again if line.startswith("Epoch ")]
    assert any("training had ended after epoch 2" in line for line in again)
    assert (retried.best_epoch, retried.best_metrics) == (whole.best_epoch, resumed.best_metrics)
    for a, b in zip(load_keras_model(str(tmp_path / "resumed")).get_weights(),
                    load_keras_model(str(tmp_path / "again")).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the best epoch's weights, as the first attempt saved them


def test_under_kubeflows_minio_root_checkpoints_go_beside_the_model_once_kic_can_reach_the_store(monkeypatch):
    model = "minio://mlpipeline/v2/artifacts/p/r/train/model"
    for name in storage.S3_ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    storage.use_for_minio(None)
    assert checkpoints.default_location(model, "/minio/x") == ""  # nowhere kic can write
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio-service.kubeflow:9000")  # kic compile --s3-endpoint
    assert checkpoints.default_location(model, "/minio/x") == "minio://mlpipeline/v2/artifacts/p/r/train/checkpoints"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    storage.use_for_minio(storage.S3Store("http://seaweedfs.kubeflow:9000"))  # found by train in its pod
    try:
        assert checkpoints.default_location(model, "/minio/x").startswith("minio://mlpipeline/")
    finally:
        storage.use_for_minio(None)
    assert checkpoints.default_location("s3://b/root/r/train/model", "/s3/x") == "s3://b/root/r/train/checkpoints"


@pytest.mark.slow  # a real train; test_checkpoints_on_s3 is the fast check of the store on S3
def test_a_run_preempted_with_its_checkpoints_on_s3_resumes_from_them(prepared, tiny_backbone, trained, s3_server,
                                                                      tmp_path):
    config = TrainingConfig(epochs=2, batch_size=8, learning_rate=0.01)
    bucket = s3_server.new_bucket()
    options = train_options(tiny_backbone, checkpoint_uri=f"{bucket}/run/checkpoints", checkpoint_every_steps=2)

    def preempted_at_the_end_of_epoch_1(line: str) -> None:
        if line.startswith("Epoch 1/2"):
            raise Preempted

    with pytest.raises(Preempted):
        train(prepared, str(tmp_path / "first"), config, options, log=preempted_at_the_end_of_epoch_1)
    committed = [key for key in _files(f"{bucket}/run/checkpoints") if key.endswith("/COMMITTED")]
    assert committed == ["ckpt-00000-000000002/COMMITTED"]
    lines: list[str] = []
    resumed = train(prepared, str(tmp_path / "resumed"), config, options, log=lines.append)
    assert any(line.startswith("train: resuming from checkpoint") and line.endswith("at epoch 1 (step 2)")
               for line in lines), lines
    whole = trained.result
    for key, values in whole.history.items():
        np.testing.assert_allclose(resumed.history[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
