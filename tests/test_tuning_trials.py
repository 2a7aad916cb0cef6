"""A trial: trained as train does and recorded; a failure recorded, not raised; the
winner picked by the objective and its direction."""

import json
import math
import os

import pytest
import tiny_backbone as tiny
from kfp import dsl

from kic import artifacts, parameters
from kic.model import model_info
from kic.runtime import steps
from kic.tuning import settings as tuning_settings
from kic.tuning import trials as tuning_trials
from kic.tuning.objective import Objective
from kic.tuning.trials import FAILED, SUCCEEDED, TrialResult, TuningError

ACCURACY = Objective("val_accuracy", "maximize")


def item(trial=0, **hyperparameters):
    resolved = tuning_settings.resolve({"parameters": {"optimizer": ["adam", "sgd"]}},
                                       values=parameters.resolve({"data_source": "/data"}, reachability=False))
    values = {"epochs": 1, "batch_size": 8, "learning_rate": 0.01, **hyperparameters}
    [planned] = tuning_trials.plan(resolved, 1, [{"optimizer": "adam"}], first_index=trial)
    planned["hyperparameters"].update(values)
    return planned


def result(trial, status=SUCCEEDED, objective=None, **fields):
    return TrialResult(trial=trial, wave=1, status=status, objective=objective, hyperparameters={"optimizer": "adam"},
                       **fields)


def test_a_trial_trains_and_records_its_objective_at_the_best_epoch(prepared, tiny_backbone, tmp_path):
    model_dir = str(tmp_path / "model")
    lines = []
    record = tuning_trials.run(item(3), prepared, model_dir, tiny.train_options(tiny_backbone), log=lines.append)
    info = model_info.load(model_dir)
    assert (record.trial, record.status, record.error) == (3, SUCCEEDED, "")
    assert record.objective == info.metrics["val_accuracy"] and record.epochs_run == 1 and record.best_epoch == 1
    assert record.seconds > 0 and record.hyperparameters == {"optimizer": "adam"}
    assert info.hyperparameters["learning_rate"] == 0.01  # the trial's, not the default
    assert os.path.exists(os.path.join(model_dir, artifacts.KERAS_MODEL))
    assert json.loads((tmp_path / "model" / tuning_trials.TRIAL_JSON).read_text()) == record.to_json()
    assert any("trial 3 succeeded" in line for line in lines)


def test_a_failing_trial_is_recorded_not_raised(prepared, tiny_backbone, tmp_path):
    # binary_mode passes the contract but not these three-class data: it fails inside training.
    model_dir = tmp_path / "model"
    record = tuning_trials.run(item(1, binary_mode=True), prepared, str(model_dir),
                               tiny.train_options(tiny_backbone), log=lambda _: None)
    assert (record.status, record.objective) == (FAILED, None)
    assert "binary_mode=True: needs exactly 2 classes, but the data has 3" in record.error
    assert "\n" not in record.error
    assert json.loads((model_dir / tuning_trials.TRIAL_JSON).read_text())["status"] == FAILED  # the artifact exists


def test_the_trial_step_returns_its_record_without_nulls(prepared, tiny_backbone, tmp_path):
    model = dsl.Model(name="model", uri=str(tmp_path / "model"), metadata={})
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    returned = steps.trial_step(examples=dsl.Dataset(name="examples", uri=prepared, metadata={}), model=model,
                                trial_metrics=metrics, trial=item(2, binary_mode=True), backbone=tiny_backbone,
                                pretrained_weights="none", image_size=tiny.IMAGE_SIZE, base_model_uri="", seed=1)
    # kfp.local cannot pass a None inside a struct: a failed trial's record has no objective rather than null.
    assert "objective" not in returned and returned["status"] == FAILED
    assert TrialResult.from_json(returned).objective is None
    assert model.metadata["trial"] == 2 and metrics.metadata["succeeded"] == 0.0


@pytest.mark.parametrize("metrics, reason", [
    ({"loss": math.nan, "val_loss": 0.5, "val_accuracy": 0.4}, "training diverged: loss is nan"),
    ({"loss": 0.5, "val_loss": math.inf, "val_accuracy": 0.4}, "training diverged: val_loss is inf"),
    ({"loss": 0.5, "val_loss": 0.5}, "training recorded no val_accuracy"),
])
def test_a_trial_whose_loss_diverged_or_lacks_the_metric_failed(metrics, reason):
    status, value, error = tuning_trials.outcome(metrics, ACCURACY)
    assert (status, value) == (FAILED, None) and error.startswith(reason)
    assert tuning_trials.outcome({"loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.75}, ACCURACY) == (
        SUCCEEDED, 0.75, "")


def test_the_best_trial_by_the_objectives_direction_earliest_among_equals():
    results = [result(0, objective=0.7), result(1, FAILED, error="boom"), result(2, objective=0.9),
               result(3, objective=0.9), result(4, objective=0.2)]
    assert tuning_trials.best(results, ACCURACY).trial == 2
    assert tuning_trials.best(results, Objective("val_loss", "minimize")).trial == 4


def test_a_search_where_every_trial_failed_says_why_each_did():
    with pytest.raises(TuningError) as error:
        tuning_trials.best([result(1, FAILED, error="out of memory"), result(0, FAILED, error="diverged")], ACCURACY)
    assert "every one of the 2 trials failed" in str(error.value)
    assert "trial 0: diverged; trial 1: out of memory" in str(error.value)


def test_a_record_survives_a_kfp_struct():
    record = result(5, objective=0.5, epochs_run=3, best_epoch=2, seconds=1.5, metrics={"val_accuracy": 0.5})
    payload = json.loads(json.dumps(record.to_json()), parse_int=float)
    assert TrialResult.from_json(payload) == record


def test_collected_records_get_their_searched_values_typed_again():
    resolved = tuning_settings.resolve(
        {"parameters": {"batch_size": {"min": 8, "max": 64}, "augmentation": [True, False]}},
        values=parameters.resolve({"data_source": "/data"}, reachability=False))
    payload = {**result(0, objective=0.5).to_json(), "hyperparameters": {"batch_size": 32.0, "augmentation": True}}
    [record] = tuning_trials.collected([json.loads(json.dumps(payload), parse_int=float)], resolved)
    assert record.hyperparameters == {"batch_size": 32, "augmentation": True}
    assert type(record.hyperparameters["batch_size"]) is int and type(record.trial) is int


def _select(tmp_path, records):
    resolved = tuning_settings.resolve({"parameters": {"optimizer": ["adam", "sgd"]}}, trials=len(records),
                                       parallelism=1, values=parameters.resolve({"data_source": "/data"},
                                                                                 reachability=False))
    settings = dsl.Artifact(name="settings", uri=str(tmp_path / "settings"), metadata={})
    (tmp_path / "settings").write_text(json.dumps(resolved.to_json()))
    models = []
    for record in records:  # as the trial step leaves them: the model folder and the record in it
        folder = tmp_path / f"trial-{record.trial}"
        folder.mkdir()
        (folder / tuning_trials.TRIAL_JSON).write_text(json.dumps(record.to_json()))
        (folder / "weights").write_text(f"trial {record.trial}")
        models.append(dsl.Model(name="model", uri=str(folder), metadata={"trial": record.trial}))
    outputs = {name: kind(name=name, uri=str(tmp_path / "out" / name), metadata={}) for name, kind in (
        ("best_model", dsl.Model), ("trials", dsl.Artifact), ("best_hyperparameters", dsl.Artifact),
        ("report", dsl.HTML), ("report_markdown", dsl.Markdown), ("tuning_metrics", dsl.Metrics))}
    # Collected lists come in any order; the records are JSON structs (numbers as floats, no nulls).
    payloads = [{name: value for name, value in record.to_json().items() if value is not None} for record in records]
    steps.select_best_step(settings=settings, first_wave=payloads[:1], second_wave=payloads[1:],
                           first_wave_models=models[:1][::-1], second_wave_models=models[1:][::-1], **outputs)
    return outputs


def test_select_best_hands_on_the_winners_model_and_writes_the_searchs_record(tmp_path):
    records = [result(0, objective=0.6), result(1, FAILED, error="boom"), result(2, objective=0.8)]
    outputs = _select(tmp_path, records)
    assert (tmp_path / "out" / "best_model" / "weights").read_text() == "trial 2"
    assert outputs["best_model"].metadata["trial"] == 2
    document = json.loads((tmp_path / "out" / "trials").read_text())
    assert (document["best_trial"], document["failed"]) == (2, 1)
    assert json.loads((tmp_path / "out" / "best_hyperparameters").read_text())["optimizer"] == "adam"
    assert "(best)" in (tmp_path / "out" / "report_markdown").read_text()
    assert outputs["tuning_metrics"].metadata["best_val_accuracy"] == 0.8


def test_select_best_fails_cleanly_when_every_trial_failed(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _select(tmp_path, [result(0, FAILED, error="out of memory"), result(1, FAILED, error="diverged")])
    assert "every one of the 2 trials failed" in capsys.readouterr().out
