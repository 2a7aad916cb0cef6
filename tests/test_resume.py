"""`kic run --resume` after the run was killed: train goes on from its checkpoint.

The slow test kills a whole `kic run` (its process group, as a preemption
does) during its fourth epoch, runs the same command with --resume, and
compares the result with an uninterrupted training of the same settings. The
fast ones check which checkpoint folder a local run uses, and when it is
emptied."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kic import artifacts
from kic.cli import local_runs
from kic.pipeline_names import PREPARE_TASK, TRAIN_TASK

EPOCHS = 6
SETTINGS = {"backbone": "mobilenet_v3_small_100_224", "pretrained_weights": "none", "image_size": "32",
            "epochs": str(EPOCHS), "batch_size": "8", "learning_rate": "0.002", "checkpoint_every_steps": "0"}


def test_a_local_run_keeps_its_checkpoints_in_the_output_folder_and_only_resume_keeps_old_ones(tmp_path, capsys):
    old = tmp_path / artifacts.CHECKPOINTS_DIR / "ckpt-00002-000000000"
    old.mkdir(parents=True)
    (old / "COMMITTED").write_text("x")
    resumed = local_runs._with_checkpoints({"checkpoint_uri": ""}, str(tmp_path), resume=True)
    assert resumed["checkpoint_uri"] == str(tmp_path / artifacts.CHECKPOINTS_DIR) and old.is_dir()
    assert "train continues from its checkpoint" in capsys.readouterr().out
    fresh = local_runs._with_checkpoints({"checkpoint_uri": ""}, str(tmp_path), resume=False)
    assert fresh == resumed and not (tmp_path / artifacts.CHECKPOINTS_DIR).exists()  # a new run starts afresh
    old.mkdir(parents=True)
    notes = tmp_path / artifacts.CHECKPOINTS_DIR / "notes.txt"
    notes.write_text("mine")
    local_runs._with_checkpoints({"checkpoint_uri": ""}, str(tmp_path), resume=False)
    assert not old.exists() and notes.read_text() == "mine"  # only kic's checkpoints are removed
    assert local_runs._with_checkpoints({"checkpoint_uri": "gs://b/c"}, str(tmp_path), resume=False) == {
        "checkpoint_uri": "gs://b/c"}  # a folder the user names is theirs


def _kic_run(data, output, *extra) -> list[str]:
    command = [sys.executable, "-m", "kic.cli", "run", "--data", str(data), "--output", str(output), *extra]
    for name, value in SETTINGS.items():
        command += ["--param", f"{name}={value}"]
    return command


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_checkpointed_epoch_and_learns_as_much(tmp_path):
    from kic.demo_data import write_demo_dataset

    data, output = tmp_path / "images", tmp_path / "out"
    write_demo_dataset(str(data), images_per_class=20, size=40)
    checkpoints = output / artifacts.CHECKPOINTS_DIR

    with open(tmp_path / "first.log", "w") as first_log:
        first = subprocess.Popen(_kic_run(data, output), stdout=first_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            # The end of epoch 3 committed: epoch 4 has started.
            while not (checkpoints / "ckpt-00003-000000000" / "COMMITTED").exists():
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "epoch 3 never ended"
                time.sleep(0.1)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the whole run, its steps' processes included
            first.wait()
    # Where it was killed: the latest committed checkpoint (epoch 4 may have ended in the meantime, and a kill
    # between its commit and the removal of epoch 3's leaves both: resume must take the latest).
    committed = max(path.parent.name for path in checkpoints.glob("ckpt-*/COMMITTED"))
    next_epoch = int(committed.split("-")[1]) + 1
    assert next_epoch >= 4

    resumed = subprocess.run(_kic_run(data, output, "--resume"), capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    train_log = (output / "logs" / "train.log").read_text()
    assert f"train: resuming from checkpoint {checkpoints / committed} at epoch {next_epoch}" in train_log, \
        train_log[-3000:]
    assert re.findall(rf"Epoch (\d+)/{EPOCHS} - loss", log) == [str(epoch) for epoch in range(next_epoch, EPOCHS + 1)]
    (history_file,) = glob.glob(str(output / "runs" / "*" / TRAIN_TASK / "model" / "history.json"))  # the resumed run's
    history = json.loads(open(history_file).read())
    assert all(len(values) == EPOCHS for values in history.values()), history  # every epoch once

    # The same training without an interruption, on the data the resumed run prepared.
    from kic.config import TrainingConfig
    from kic.training import TrainOptions, train

    prepared = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(history_file))), PREPARE_TASK, "examples")
    config = TrainingConfig.from_dict({name: SETTINGS[name] for name in ("epochs", "batch_size", "learning_rate")})
    whole = train(prepared, str(tmp_path / "whole"), config,
                  TrainOptions(backbone=SETTINGS["backbone"], pretrained_weights="none", image_size=32),
                  log=lambda _line: None)
    print("val_accuracy resumed", history["val_accuracy"], "uninterrupted", whole.history["val_accuracy"])
    assert max(history["val_accuracy"]) >= max(whole.history["val_accuracy"]) - 0.05
    np.testing.assert_allclose(history["val_loss"], whole.history["val_loss"], rtol=0.05, atol=0.02)
