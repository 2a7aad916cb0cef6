"""`kic tune`: a real search through the KFP local runner (ParallelFor, Collected),
on tiny data, where half the trials fail; the winner is evaluated and exported,
and its hyperparameters feed `kic run` and `kic validate`."""

import json
import subprocess
import sys
import tarfile
import time

import pytest

from kic import config, parameters
from kic.demo_data import write_demo_dataset

KIC = [sys.executable, "-m", "kic.cli"]
TINY = {"backbone": "mobilenet_v3_small_100_224", "pretrained_weights": "none", "image_size": "32", "epochs": "2",
        "batch_size": "8", "validation_fraction": "0.25", "test_fraction": "0.25"}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("kic-tune")
    write_demo_dataset(str(root / "images"), images_per_class=12, size=40)
    # A grid of four trials over two waves of two. binary_mode=True passes the contract but fails on these
    # three-class data, inside training: one failed trial in each wave, and the search goes on.
    (root / "space.json").write_text(json.dumps({"parameters": {
        "learning_rate": [0.003, 0.03], "binary_mode": [False, True]}, "strategy": "grid"}))
    command = [*KIC, "tune", "--data", str(root / "images"), "--output", str(root / "out"), "--search-space",
               str(root / "space.json"), "--parallelism", "2"]
    for name, value in TINY.items():
        command += ["--param", f"{name}={value}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=str(root), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root / "out", result.stdout + result.stderr, time.perf_counter() - started


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_search_goes_on(search):
    output, log, search_seconds = search
    document = json.loads((output / "trials.json").read_text())
    trials = document["trials"]
    assert [trial["trial"] for trial in trials] == [0, 1, 2, 3] and {trial["wave"] for trial in trials} == {1, 2}
    failed = [trial for trial in trials if trial["status"] == "failed"]
    assert [trial["hyperparameters"]["binary_mode"] for trial in failed] == [True, True]
    assert {trial["wave"] for trial in failed} == {1, 2}  # a failure in the first wave did not stop the second
    assert all("needs exactly 2 classes" in trial["error"] and trial["objective"] is None for trial in failed)
    succeeded = [trial for trial in trials if trial["status"] == "succeeded"]
    assert sorted(trial["hyperparameters"]["learning_rate"] for trial in succeeded) == [0.003, 0.03]
    # The objective is an accuracy over the validation split: a whole number of its images.
    validation_images = json.loads((output / "data_report.json").read_text())["counts"]["per_split"]["validation"]
    for trial in succeeded:
        correct = trial["objective"] * validation_images
        assert 0 <= round(correct) <= validation_images and correct == pytest.approx(round(correct), abs=1e-4), trial
        assert trial["objective"] == trial["metrics"]["val_accuracy"] and trial["epochs_run"] == 2
        assert 0 < trial["seconds"] < search_seconds  # a trial's own time, in seconds


@pytest.mark.slow
def test_the_winner_has_the_best_objective_and_is_the_model_evaluated_and_exported(search):
    output, log, _ = search
    document = json.loads((output / "trials.json").read_text())
    succeeded = [trial for trial in document["trials"] if trial["status"] == "succeeded"]
    best = max(succeeded, key=lambda trial: (trial["objective"], -trial["trial"]))
    assert document["best_trial"] == best["trial"]
    # The exported model is the winner's: its recorded hyperparameters and best-epoch metrics are the trial's.
    info = json.loads((output / "model" / "model_info.json").read_text())
    assert info["hyperparameters"]["learning_rate"] == best["hyperparameters"]["learning_rate"]
    assert info["metrics"]["val_accuracy"] == best["objective"]
    with tarfile.open(output / "model.tar.gz") as tar:
        assert "1/saved_model.pb" in tar.getnames()
    for name in ("metrics.json", "evaluation.json", "evaluation_report.html", "blessing.json", "data_report.html"):
        assert (output / name).is_file(), name
    report = (output / "tuning_report.html").read_text()
    assert "data:image/png;base64," in report and "(best)" in (output / "tuning_report.md").read_text()
    assert f"best trial:   {best['trial']}" in log and "kic tune finished" in log


@pytest.mark.slow
def test_best_hyperparameters_feed_kic_run_and_kic_validate(search):
    output, _, _ = search
    path = output / "best_hyperparameters.json"
    best = json.loads(path.read_text())
    assert all(isinstance(value, str) for value in best.values())
    assert config.from_reference_json(str(path)).epochs == 2
    result = subprocess.run([*KIC, "validate", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["learning_rate"] == float(best["learning_rate"])
    # What `kic run --hyperparameters` resolves before it starts a run.
    values = parameters.resolve(config.read_json_object(str(path)),
                                {"data_source": str(output), "pretrained_weights": "none"})
    assert values["binary_mode"] is False and values["batch_size"] == 8
