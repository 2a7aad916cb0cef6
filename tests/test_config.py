"""The hyperparameter contract: defaults, bounds, enums, combinations, the reference JSON."""

import dataclasses
import json

import pytest

from kic.config import (
    ALIASES,
    EVAL_METRICS,
    FLIP_MODES,
    INTERPOLATIONS,
    OPTIMIZERS,
    REINITIALIZE_CHOICES,
    HyperparameterError,
    ParameterError,
    TrainingConfig,
    from_reference_json,
)

# The reference table (shared/reference/hyperparameters.md), restated independently.
REFERENCE_DEFAULTS = {
    "augmentation": False, "augmentation_random_flip": "horizontal_and_vertical",
    "augmentation_random_rotation": 0.2, "augmentation_random_zoom": 0.1, "batch_size": 32, "beta_1": 0.9,
    "beta_2": 0.999, "binary_mode": False, "dropout_rate": 0.2, "early_stopping": False,
    "early_stopping_min_delta": 0.0, "early_stopping_patience": 5, "epochs": 3, "epsilon": 1e-7,
    "eval_metric": "accuracy", "image_resize_interpolation": "bilinear", "initial_accumulator_value": 0.0001,
    "label_smoothing": 0.1, "learning_rate": 0.001, "momentum": 0.9, "optimizer": "adam",
    "regularizers_l2": 0.0001, "reinitialize_top_layer": "Auto", "rho": 0.95, "train_only_on_top_layer": False,
}
# name -> (lowest valid, highest valid or None when unbounded above)
NUMERIC_BOUNDS = {
    "augmentation_random_rotation": (-1.0, 1.0), "augmentation_random_zoom": (-1.0, 1.0), "batch_size": (1, None),
    "beta_1": (0.0, 1.0), "beta_2": (0.0, 1.0), "dropout_rate": (0.0, 1.0), "early_stopping_min_delta": (0.0, 1.0),
    "early_stopping_patience": (1, None), "epochs": (1, None), "epsilon": (0.0, 1.0),
    "initial_accumulator_value": (0.0, 1.0), "label_smoothing": (0.0, 1.0), "learning_rate": (0.0, 1.0),
    "momentum": (0.0, 1.0), "regularizers_l2": (0.0, 1.0), "rho": (0.0, 1.0),
}
ENUMS = {
    "augmentation_random_flip": ("horizontal_and_vertical", "vertical", "None", "horizontal"),
    "eval_metric": ("accuracy", "precision", "recall", "auc", "prc"),
    "image_resize_interpolation": ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                                   "mitchellcubic"),
    "optimizer": ("adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta"),
    "reinitialize_top_layer": ("Auto", "True", "False"),
}


def test_exactly_the_25_reference_hyperparameters_with_their_defaults():
    config = TrainingConfig()
    assert len(dataclasses.fields(config)) == 25
    assert config.to_dict() == REFERENCE_DEFAULTS
    for name, value in REFERENCE_DEFAULTS.items():
        assert type(getattr(config, name)) is type(value), name


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().epochs = 10


@pytest.mark.parametrize("name", sorted(NUMERIC_BOUNDS))
def test_numeric_bounds_are_inclusive_and_enforced(name):
    low, high = NUMERIC_BOUNDS[name]
    binary = {"binary_mode": False}
    TrainingConfig(**{name: low}, **binary)
    step = 1 if isinstance(low, int) else 1e-6
    with pytest.raises(HyperparameterError) as error:
        TrainingConfig(**{name: low - step})
    assert [problem.name for problem in error.value.problems] == [name]
    assert name in str(error.value) and repr(low - step) in str(error.value)
    if high is not None:
        TrainingConfig(**{name: high})
        with pytest.raises(HyperparameterError):
            TrainingConfig(**{name: high + step})


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_every_enum_value_is_accepted_and_others_rejected(name):
    for value in ENUMS[name]:
        TrainingConfig(**{name: value, "binary_mode": name == "eval_metric"})
    with pytest.raises(HyperparameterError) as error:
        TrainingConfig(**{name: "bogus", "binary_mode": True})
    assert "bogus" in str(error.value) and ENUMS[name][0] in str(error.value)


def test_module_enums_match_the_contract():
    assert set(FLIP_MODES) == set(ENUMS["augmentation_random_flip"])
    assert EVAL_METRICS == ENUMS["eval_metric"] and INTERPOLATIONS == ENUMS["image_resize_interpolation"]
    assert OPTIMIZERS == ENUMS["optimizer"] and REINITIALIZE_CHOICES == ENUMS["reinitialize_top_layer"]


def test_wrong_types_are_rejected():
    with pytest.raises(HyperparameterError) as error:
        TrainingConfig(augmentation="True", epochs=2.5, batch_size=True, learning_rate="0.1")
    assert sorted(problem.name for problem in error.value.problems) == [
        "augmentation", "batch_size", "epochs", "learning_rate"]


def test_non_finite_numbers_are_rejected():
    with pytest.raises(HyperparameterError):
        TrainingConfig(learning_rate=float("nan"))


@pytest.mark.parametrize("metric", ["precision", "recall", "auc", "prc"])
def test_eval_metric_other_than_accuracy_needs_binary_mode(metric):
    with pytest.raises(HyperparameterError, match="binary_mode"):
        TrainingConfig(eval_metric=metric)
    config = TrainingConfig(eval_metric=metric, binary_mode=True)
    assert config.monitored_metric == f"val_{metric}"


def test_binary_mode_needs_two_class_data():
    TrainingConfig(binary_mode=True).check_against_data(2)
    with pytest.raises(HyperparameterError, match="exactly 2 classes, but the data has 3"):
        TrainingConfig(binary_mode=True).check_against_data(3)
    TrainingConfig().check_against_data(3)


def test_one_error_lists_every_problem():
    with pytest.raises(HyperparameterError) as error:
        TrainingConfig(epochs=0, learning_rate=2.0, optimizer="lbfgs", eval_metric="auc", dropout_rate=-0.5)
    names = [problem.name for problem in error.value.problems]
    assert sorted(names) == ["dropout_rate", "epochs", "eval_metric", "learning_rate", "optimizer"]
    message = str(error.value)
    assert "5 problems" in message and "lbfgs" in message and "[0, 1]" in message


def test_reference_all_strings_json_gives_the_same_config():
    reference = {name: str(value) for name, value in REFERENCE_DEFAULTS.items()}
    assert from_reference_json(reference) == TrainingConfig()
    custom = {"epochs": "10", "learning_rate": "0.01", "binary_mode": "True", "eval_metric": "auc",
              "augmentation": "true", "batch_size": "64", "optimizer": "rmsprop", "label_smoothing": "0"}
    config = from_reference_json(custom)
    assert config == TrainingConfig(epochs=10, learning_rate=0.01, binary_mode=True, eval_metric="auc",
                                    augmentation=True, batch_size=64, optimizer="rmsprop", label_smoothing=0.0)


def test_reference_aliases(tmp_path):
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"train_only_top_layer": "True", "eps": "1e-5"}))
    config = from_reference_json(str(path))
    assert config.train_only_on_top_layer is True and config.epsilon == 1e-5
    assert set(ALIASES) == {"train_only_top_layer", "eps"}
    with pytest.raises(HyperparameterError, match="given twice"):
        from_reference_json({"eps": "1e-5", "epsilon": "1e-6"})


def test_unknown_names_suggest_the_closest():
    with pytest.raises(HyperparameterError) as error:
        from_reference_json({"learnin_rate": "0.1", "epoch": "3"})
    message = str(error.value)
    assert "did you mean 'learning_rate'" in message and "did you mean 'epochs'" in message


# A training job's hyperparameters as SageMaker hands them over: the algorithm's own and the SDK's.
SAGEMAKER_JOB = {"epochs": "4", "learning_rate": "0.01", "sagemaker_program": "transfer_learning.py",
                 "sagemaker_submit_directory": "s3://bucket/sourcedir.tar.gz", "sagemaker_region": "\"us-west-2\"",
                 "sagemaker_container_log_level": "20", "_tuning_objective_metric": "validation:accuracy"}


def test_a_framework_estimators_json_encoded_values_are_read(tmp_path):
    """SageMaker's framework estimators record every hyperparameter JSON-encoded: strings quoted, booleans
    lower-case; a hyperparameters.json copied from such a job looks like this."""
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps({"optimizer": json.dumps("sgd"), "epochs": json.dumps(4), "batch_size": '"16"',
                                "train_only_top_layer": json.dumps(True), "augmentation": "False",
                                "binary_mode": "false", "reinitialize_top_layer": json.dumps("True"),
                                "augmentation_random_flip": json.dumps("horizontal"), "eps": json.dumps(1e-6),
                                "sagemaker_region": json.dumps("us-west-2")}))
    config = from_reference_json(str(path), note=lambda _: None)
    assert config == TrainingConfig(optimizer="sgd", epochs=4, batch_size=16, train_only_on_top_layer=True,
                                    augmentation=False, binary_mode=False, reinitialize_top_layer="True",
                                    augmentation_random_flip="horizontal", epsilon=1e-6)
    # Booleans for the reference's "True"/"False"/"Auto" strings, in any case, as JSON writes them.
    for given, read in (("true", "True"), ('"false"', "False"), ("AUTO", "Auto"), ('"Auto"', "Auto")):
        assert from_reference_json({"reinitialize_top_layer": given}).reinitialize_top_layer == read
    with pytest.raises(HyperparameterError, match="optimizer"):  # quoted or not, a wrong value stays wrong
        from_reference_json({"optimizer": '"adamw"'})


def test_the_keys_sagemaker_adds_are_ignored_with_a_note(recwarn):
    notes = []
    assert from_reference_json(SAGEMAKER_JOB, note=notes.append) == TrainingConfig(epochs=4, learning_rate=0.01)
    (note,) = notes
    for name in ("sagemaker_program", "sagemaker_submit_directory", "sagemaker_region", "_tuning_objective_metric"):
        assert name in note
    assert "SageMaker adds these" in note and not recwarn.list
    with pytest.warns(UserWarning, match="sagemaker_program"):  # no note function: a warning, never silence
        assert from_reference_json(SAGEMAKER_JOB) == TrainingConfig(epochs=4, learning_rate=0.01)


def test_other_unknown_keys_stay_errors_beside_the_sagemaker_ones():
    with pytest.raises(HyperparameterError) as error:
        from_reference_json({**SAGEMAKER_JOB, "learnin_rate": "0.1", "sagemakr_program": "x"}, note=lambda _: None)
    assert sorted(problem.name for problem in error.value.problems) == ["learnin_rate", "sagemakr_program"]
    assert "did you mean 'learning_rate'" in str(error.value)


def test_string_conversion_problems_and_range_problems_come_together():
    with pytest.raises(HyperparameterError) as error:
        from_reference_json({"augmentation": "yes", "epochs": "three", "momentum": "1.5"})
    assert sorted(problem.name for problem in error.value.problems) == ["augmentation", "epochs", "momentum"]


def test_bad_json_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ParameterError, match="not valid JSON"):
        from_reference_json(str(path))


def test_ignored_parameters_per_optimizer():
    assert TrainingConfig(optimizer="adam").ignored_parameters() == ["initial_accumulator_value", "momentum", "rho"]
    assert "momentum" not in TrainingConfig(optimizer="nesterov").ignored_parameters()
    assert "beta_1" in TrainingConfig(optimizer="adadelta").ignored_parameters()
