"""What a search leaves: trials.json, the report (a table, a plot, the influential
hyperparameters first) and best_hyperparameters.json, which kic run and kic
validate read."""

import argparse
import json

import pytest
from report_views import read_html, read_markdown

from kic import cli, parameters
from kic.cli import options
from kic.config import TrainingConfig, read_json_object
from kic.tuning import report
from kic.tuning import settings as tuning_settings
from kic.tuning.trials import FAILED, SUCCEEDED, TrialResult

SPACE = {"parameters": {"learning_rate": {"min": 1e-4, "max": 0.1, "scale": "log"},
                        "dropout_rate": {"min": 0.0, "max": 0.5},
                        "optimizer": ["adam", "sgd"]}}


@pytest.fixture(scope="module")
def search():
    values = parameters.resolve({"data_source": "/data", "epochs": 4}, reachability=False)
    settings = tuning_settings.resolve(SPACE, values=values, trials=6, parallelism=2)
    # The objective follows the learning rate; dropout and the optimizer are noise.
    rows = [(0.0001, 0.40, "adam", 0.50), (0.001, 0.10, "sgd", 0.62), (0.003, 0.30, "adam", 0.70),
            (0.01, 0.05, "sgd", 0.81), (0.03, 0.20, "adam", 0.86), (0.1, 0.45, "sgd", None)]
    results = [TrialResult(trial=index, wave=1 + index // 3, status=SUCCEEDED if objective else FAILED,
                           objective=objective, epochs_run=4 if objective else 0, seconds=10.0 + index,
                           hyperparameters={"learning_rate": rate, "dropout_rate": dropout, "optimizer": optimizer},
                           error="" if objective else "training diverged: <b>loss</b> is nan | at the kept epoch")
               for index, (rate, dropout, optimizer, objective) in enumerate(rows)]
    winner = results[4]
    return settings, results, winner, report.trials_document(settings, results, winner)


def test_trials_json_records_every_trial_and_the_winner(search):
    settings, results, winner, document = search
    assert json.loads(json.dumps(document)) == document  # JSON as is
    assert (document["best_trial"], document["succeeded"], document["failed"]) == (4, 5, 1)
    assert document["objective"] == {"metric": "val_accuracy", "direction": "maximize"}
    assert [trial["trial"] for trial in document["trials"]] == list(range(6))
    for trial in document["trials"]:
        assert set(trial) >= {"hyperparameters", "objective", "epochs_run", "seconds", "status"}
    assert document["trials"][5]["objective"] is None and document["trials"][5]["status"] == FAILED
    assert document["fixed_hyperparameters"]["epochs"] == 4 and "learning_rate" not in document[
        "fixed_hyperparameters"]


def test_the_hyperparameter_the_objective_follows_ranks_first(search):
    settings, results, _, document = search
    ranked = report.influence(settings, results)
    assert ranked[0] == ("learning_rate", 1.0)  # perfectly monotonic among the trials that succeeded
    assert {name for name, _ in ranked} == {"learning_rate", "dropout_rate", "optimizer"}
    assert all(0.0 <= score < 0.9 for _, score in ranked[1:])
    assert list(document["influence"]) == [name for name, _ in ranked]


def test_the_report_has_the_table_the_plot_and_shows_what_users_wrote_as_written(search):
    *_, document = search
    markdown, page = read_markdown(report.render_markdown(document)), read_html(report.render_html(document))
    for shown in (markdown, page):
        trials, influence = shown.tables
        assert trials[0] == ["trial", "wave", "status", "val_accuracy", "learning_rate", "dropout_rate", "optimizer",
                             "epochs run", "seconds", "error"]
        assert trials[5] == ["4 (best)", "2", "succeeded", "0.8600", "0.03", "0.2", "adam", "4", "14.0", ""]
        # The error's tags and column separator are its text: one cell, no <b> element.
        assert trials[6] == ["5", "2", "failed", "", "0.1", "0.45", "sgd", "0", "15.0",
                             "training diverged: <b>loss</b> is nan | at the kept epoch"]
        assert shown.tags("b") == []
        assert influence[:2] == [["hyperparameter", "influence"], ["learning_rate", "1.00"]]
        assert "Influence on val_accuracy" in shown.text and "Best: trial 4, val_accuracy = 0.8600" in shown.text
    [plot] = page.tags("img")
    assert plot["src"].startswith("data:image/png;base64,") and markdown.tags("img") == []


def test_best_hyperparameters_are_the_winners_as_the_reference_writes_them(search):
    settings, _, winner, _ = search
    best = report.best_hyperparameters(settings, winner)
    assert set(best) == set(parameters.HYPERPARAMETERS) and all(isinstance(value, str) for value in best.values())
    assert (best["learning_rate"], best["dropout_rate"], best["optimizer"], best["epochs"]) == (
        "0.03", "0.2", "adam", "4")
    assert best["augmentation"] == "False"


def test_kic_validate_and_kic_run_accept_best_hyperparameters(search, tmp_path, capsys):
    settings, _, winner, _ = search
    path = tmp_path / "best_hyperparameters.json"
    path.write_text(json.dumps(report.best_hyperparameters(settings, winner)))
    assert cli.main(["validate", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["learning_rate"] == 0.03
    # What `kic run --hyperparameters FILE` does before it starts the pipeline.
    args = argparse.Namespace(hyperparameters=str(path), param=["epochs=9", "pretrained_weights=none"],
                              data=str(tmp_path))
    layers, malformed = options.parameter_layers(args)
    values = parameters.resolve(*layers)
    assert malformed == [] and (values["learning_rate"], values["epochs"], values["optimizer"]) == (0.03, 9, "adam")
    assert TrainingConfig.from_dict(read_json_object(str(path))).learning_rate == 0.03
