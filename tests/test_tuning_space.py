"""The search space and the tuning front door: both formats read, every value and
pair a space can produce checked by the hyperparameter contract, the objective,
and which setting wins."""

import json

import pytest

from kic import parameters
from kic.errors import ParameterError
from kic.tuning import settings as tuning_settings
from kic.tuning import space as spaces
from kic.tuning.settings import Settings

# The reference's suggested ranges (its docs), as a CreateHyperParameterTuningJob request carries them.
REFERENCE_JOB = {
    "HyperParameterTuningJobName": "ic-tuning",
    "HyperParameterTuningJobConfig": {
        "Strategy": "Bayesian",
        "RandomSeed": 7,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 4},
        "TrainingJobEarlyStoppingType": "Auto",
        "ParameterRanges": {
            "ContinuousParameterRanges": [
                {"Name": "learning_rate", "MinValue": "0.000001", "MaxValue": "0.5", "ScalingType": "Auto"},
                {"Name": "beta_1", "MinValue": "1e-6", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
                {"Name": "beta_2", "MinValue": "1e-6", "MaxValue": "0.999", "ScalingType": "Linear"},
                {"Name": "momentum", "MinValue": "0", "MaxValue": "0.999"},
                {"Name": "regularizers_l2", "MinValue": "0", "MaxValue": "0.999", "ScalingType": "Linear"},
                {"Name": "eps", "MinValue": "1e-8", "MaxValue": "1e-4", "ScalingType": "Logarithmic"},
            ],
            "IntegerParameterRanges": [
                {"Name": "batch_size", "MinValue": "8", "MaxValue": "512", "ScalingType": "Auto"}],
            "CategoricalParameterRanges": [
                {"Name": "optimizer", "Values": ["adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta"]},
                {"Name": "train_only_top_layer", "Values": ["True", "False"]}],
        },
    },
    "TrainingJobDefinition": {
        "StaticHyperParameters": {"epochs": "5", "augmentation": "True",
                                  "_tuning_objective_metric": "validation:accuracy"},
        "AlgorithmSpecification": {"TrainingImage": "ignored", "TrainingInputMode": "File"},
    },
}


def values(**overrides):
    return parameters.resolve({"data_source": "/data", **overrides}, reachability=False)


def parsed(payload):
    document, found = spaces.parse(payload)
    assert found == []
    return document


def problems_of(call) -> list[str]:
    with pytest.raises(ParameterError) as error:
        call()
    return [str(problem) for problem in error.value.problems]


# ----------------------------------------------------------------- reading


def test_the_reference_tuning_job_is_read_as_is():
    document = parsed(REFERENCE_JOB)
    dimensions = {dimension.name: dimension for dimension in document.dimensions}
    assert document.format == "reference"
    assert list(dimensions) == ["learning_rate", "beta_1", "beta_2", "momentum", "regularizers_l2", "epsilon",
                                "batch_size", "optimizer", "train_only_on_top_layer"]  # the script's aliases too
    # Auto: log across five orders of magnitude, linear across 64x; numbers from strings, in their own types.
    assert (dimensions["learning_rate"].kind, dimensions["learning_rate"].scale) == ("float", "log")
    assert (dimensions["learning_rate"].low, dimensions["learning_rate"].high) == (1e-6, 0.5)
    assert (dimensions["batch_size"].kind, dimensions["batch_size"].scale) == ("int", "linear")
    assert (dimensions["batch_size"].low, dimensions["batch_size"].high) == (8, 512)
    assert dimensions["beta_1"].scale == "reverse_log" and dimensions["epsilon"].scale == "log"
    assert dimensions["momentum"].scale == "linear"  # no ScalingType is Auto; a range from 0 is linear
    assert dimensions["optimizer"].values == ("adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta")
    assert dimensions["train_only_on_top_layer"].values == (True, False)
    assert (document.strategy, document.trials, document.parallelism, document.seed) == ("tpe", 20, 4, 7)
    assert (document.objective_metric, document.objective_direction) == ("validation:accuracy", "Maximize")
    # The tuning service's own key is not a hyperparameter.
    assert document.static_hyperparameters == {"epochs": "5", "augmentation": "True"}
    assert any("TrainingJobEarlyStoppingType" in note for note in document.notes)


def test_the_ranges_alone_and_our_format_read_alike():
    ranges = REFERENCE_JOB["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert parsed({"ParameterRanges": ranges}).dimensions == parsed(REFERENCE_JOB).dimensions
    assert parsed(ranges).dimensions == parsed(REFERENCE_JOB).dimensions
    ours = parsed({"parameters": {
        "learning_rate": {"min": 1e-6, "max": 0.5, "scale": "auto"},
        "beta_1": {"min": 1e-6, "max": 0.999, "scale": "reverse_log"},
        "beta_2": {"min": 1e-6, "max": 0.999},
        "momentum": {"min": 0, "max": 0.999},
        "regularizers_l2": {"min": 0, "max": 0.999, "scale": "linear"},
        "eps": {"min": 1e-8, "max": 1e-4, "scale": "log"},
        "batch_size": {"min": 8, "max": 512},
        "optimizer": ["adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta"],
        "train_only_top_layer": {"values": [True, False]}},
        "objective": "val_accuracy", "strategy": "tpe", "trials": 20, "seed": 7})
    assert ours.dimensions == parsed(REFERENCE_JOB).dimensions
    assert (ours.objective_metric, ours.strategy, ours.trials, ours.seed) == ("val_accuracy", "tpe", 20, 7)


def test_a_document_is_read_from_a_file_or_from_json_text(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(REFERENCE_JOB))
    assert spaces.read(str(path)) == spaces.read(json.dumps(REFERENCE_JOB)) == parsed(REFERENCE_JOB)
    assert "cannot be read" in problems_of(lambda: spaces.read(str(tmp_path / "missing.json")))[0]
    assert "not valid JSON" in problems_of(lambda: spaces.read("{nope"))[0]


def test_every_problem_of_form_is_listed_at_once():
    found = problems_of(lambda: spaces.read(json.dumps({
        "parameters": {
            "learning_rte": {"min": 0.1, "max": 0.2},  # a typo
            "batch_size": {"min": 0.5, "max": 4},  # an integer
            "dropout_rate": {"min": 0.5, "max": 0.1},  # reversed
            "optimizer": {"min": 0, "max": 1},  # a string: values only
            "momentum": {"min": 0, "max": 0.9, "scale": "log"},  # log from 0
            "rho": {"min": 0.5, "max": 1.0, "scale": "reverse_log"},  # reverse log up to 1
            "epochs": {"values": []},
            "label_smoothing": {"min": 0, "max": 0.2, "scale": "cubic"},
        },
        "stratgy": "tpe"})))
    text = "\n".join(found)
    for expected in ("did you mean 'learning_rate'", "batch_size.min=0.5: expected an integer",
                     "'min 0.5 > max 0.1': min <= max", "a str hyperparameter: search it over values",
                     "a logarithmic scale needs min > 0", "0 <= min <= max < 1", "epochs.values=[]",
                     "label_smoothing.scale='cubic'", "search_space.stratgy"):
        assert expected in text, expected
    assert len(found) == 9


def test_the_references_kinds_and_strategies_are_checked():
    found = problems_of(lambda: spaces.read(json.dumps({"HyperParameterTuningJobConfig": {
        "Strategy": "Hyperband",
        "ParameterRanges": {
            "ContinuousParameterRanges": [{"Name": "batch_size", "MinValue": "8", "MaxValue": "64"}],
            "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "9",
                                        "ScalingType": "ReverseLogarithmic"}]}}})))
    text = "\n".join(found)
    assert "Hyperband stops trials early" in text
    assert "batch_size is a int: give it in IntegerParameterRanges" in text
    assert "Auto, Linear or Logarithmic for an integer range" in text


# ---------------------------------------------------------- against the contract


def test_a_space_that_can_produce_an_invalid_trial_fails_with_every_problem():
    found = problems_of(lambda: tuning_settings.resolve({"parameters": {
        "learning_rate": {"min": 1e-6, "max": 1.5},  # beyond the contract's [0, 1]
        "eval_metric": ["accuracy", "auc"],  # auc needs binary_mode, which is False
        "early_stopping_patience": {"min": 0, "max": 5},  # at least 1
        "optimizer": ["adam", "lbfgs"]}}, values=values(), objective_metric="val_accuracy"))
    text = "\n".join(found)
    assert "search_space.learning_rate=1.5: the space can produce this value, which is invalid: a number in [0, 1]" \
        in text
    assert "search_space.eval_metric='auc'" in text and "unless binary_mode=True" in text
    assert "search_space.early_stopping_patience=0" in text
    assert "search_space.optimizer='lbfgs'" in text
    assert len(found) == 4


def test_combinations_are_checked_but_values_are_judged_with_values_a_trial_can_have():
    # binary_mode searched over both: eval_metric=auc is invalid only with False, and so reported.
    found = problems_of(lambda: tuning_settings.resolve(
        {"parameters": {"binary_mode": [True, False], "eval_metric": ["accuracy", "auc"]}}, values=values(),
        objective_metric="val_accuracy"))
    assert found == ["search_space.binary_mode,eval_metric=(False, 'auc'): the space can produce this combination, "
                     "which is invalid: eval_metric='auc': only 'accuracy' is valid unless binary_mode=True"]
    # binary_mode searched over True only: auc and prc are fine, though the base binary_mode is False.
    settings = tuning_settings.resolve({"parameters": {"binary_mode": [True], "eval_metric": ["auc", "prc"]}},
                                       values=values(), objective_metric="val_loss")
    assert settings.names == ("binary_mode", "eval_metric")


def test_the_gate_is_checked_against_every_binary_mode_a_trial_can_have():
    base = values(binary_mode=True, eval_metric="auc", gate_metric="auc")
    found = problems_of(lambda: tuning_settings.resolve({"parameters": {"binary_mode": [True, False]}}, values=base,
                                                        objective_metric="val_loss"))
    text = "\n".join(found)
    assert "search_space.binary_mode=False" in text and "gate_metric='auc'" in text
    assert "eval_metric='auc'" in text


# ---------------------------------------------------------------- settings


def test_the_objective_defaults_to_the_monitored_metric_and_takes_the_references_names():
    assert tuning_settings.resolve({"parameters": {"dropout_rate": {"min": 0, "max": 0.5}}},
                                   values=values()).objective.to_json() == {"metric": "val_accuracy",
                                                                            "direction": "maximize"}
    binary = values(binary_mode=True, eval_metric="prc")
    settings = tuning_settings.resolve({"parameters": {"dropout_rate": {"min": 0, "max": 0.5}}}, values=binary)
    assert settings.objective.metric == "val_prc"
    settings = tuning_settings.resolve(REFERENCE_JOB, values=values())
    assert settings.objective.to_json() == {"metric": "val_accuracy", "direction": "maximize"}
    settings = tuning_settings.resolve({"parameters": {"dropout_rate": {"min": 0, "max": 0.5}}}, values=values(),
                                       objective_metric="validation:loss")
    assert settings.objective.to_json() == {"metric": "val_loss", "direction": "minimize"}


def test_an_objective_that_some_trial_would_not_record_is_refused():
    space = {"parameters": {"dropout_rate": {"min": 0, "max": 0.5}}}
    text = "\n".join(problems_of(lambda: tuning_settings.resolve(space, values=values(),
                                                                 objective_metric="val_auc",
                                                                 objective_direction="upward")))
    assert "objective_metric='val_auc'" in text and "multi-class mode" in text
    assert "objective_direction='upward'" in text
    text = "\n".join(problems_of(lambda: tuning_settings.resolve(
        {"parameters": {"eval_metric": ["auc", "prc"]}}, values=values(binary_mode=True, eval_metric="auc"))))
    assert "eval_metric is searched" in text


def test_a_parameter_wins_over_the_document_which_wins_over_the_default():
    settings = tuning_settings.resolve(REFERENCE_JOB, values=values(seed=3), parallelism=4)
    assert (settings.strategy, settings.trials, settings.seed) == ("tpe", 20, 7)
    settings = tuning_settings.resolve(REFERENCE_JOB, values=values(), strategy="sobol", trials=6,
                                       objective_metric="val_loss", parallelism=2)
    assert (settings.strategy, settings.trials, settings.objective.direction) == ("sobol", 6, "minimize")
    plain = {"parameters": {"dropout_rate": {"min": 0, "max": 0.5}}}
    settings = tuning_settings.resolve(plain, values=values(seed=3))
    assert (settings.strategy, settings.trials, settings.seed) == ("random", tuning_settings.DEFAULT_TRIALS, 3)


def test_grid_needs_values_and_runs_the_whole_grid_at_most():
    grid = {"parameters": {"optimizer": ["adam", "sgd", "rmsprop"], "augmentation": [True, False]}}
    assert tuning_settings.resolve(grid, values=values(), strategy="grid").trials == 6
    assert tuning_settings.resolve(grid, values=values(), strategy="grid", trials=50).trials == 6
    assert tuning_settings.resolve(grid, values=values(), strategy="grid", trials=4).trials == 4
    text = "\n".join(problems_of(lambda: tuning_settings.resolve(
        {"parameters": {"optimizer": ["adam"], "dropout_rate": {"min": 0, "max": 0.5}}}, values=values(),
        strategy="grid")))
    assert "give dropout_rate as values" in text
    text = "\n".join(problems_of(lambda: tuning_settings.resolve(grid, values=values(), strategy="bayes",
                                                                 trials=500)))
    assert "strategy='bayes'" in text and "trials=500" in text


def test_the_waves_fill_the_parallel_slots_and_neither_is_empty():
    size = tuning_settings.first_wave_size
    assert [size(20, 4), size(10, 4), size(4, 2), size(3, 2), size(2, 8), size(100, 1)] == [8, 4, 2, 2, 1, 50]
    for trials in range(2, 30):
        for parallelism in range(1, 9):
            assert 1 <= size(trials, parallelism) < trials


def test_settings_survive_a_kfp_struct_which_makes_every_number_a_float():
    settings = tuning_settings.resolve(REFERENCE_JOB, values=values(), parallelism=4)
    payload = json.loads(json.dumps(settings.to_json()),
                         parse_int=float)  # what a KFP struct does to integers
    assert Settings.from_json(payload) == settings
