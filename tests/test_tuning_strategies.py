"""The strategies: seeded and repeatable, within the ranges on their scales, Sobol
spread evenly, TPE learning from the first wave, the grid covered once."""

import itertools
import statistics

import numpy as np
import pytest
from scipy.stats import qmc

from kic import parameters
from kic.tuning import settings as tuning_settings
from kic.tuning import strategies
from kic.tuning import trials as tuning_trials

SPACE = {"parameters": {
    "learning_rate": {"min": 1e-5, "max": 0.5, "scale": "log"},
    "momentum": {"min": 0.5, "max": 0.999, "scale": "reverse_log"},
    "batch_size": {"min": 8, "max": 64},
    "dropout_rate": {"min": 0.0, "max": 0.5},
    "optimizer": ["adam", "sgd", "rmsprop"]}}


@pytest.fixture(scope="module")
def base():
    return parameters.resolve({"data_source": "/data"}, reachability=False)


def settings(base, strategy, trials=16, parallelism=4, space=SPACE, seed=None):
    return tuning_settings.resolve(space, values={**base, **({"seed": seed} if seed is not None else {})},
                                   strategy=strategy, trials=trials, parallelism=parallelism)


def results(planned, objective):
    return [{"trial": index, "hyperparameters": values, "status": "succeeded", "objective": objective(values)}
            for index, values in enumerate(planned)]


@pytest.mark.parametrize("strategy", ["random", "sobol", "tpe"])
def test_a_seed_gives_the_same_trials_and_another_seed_others(base, strategy):
    first = strategies.first_wave(settings(base, strategy))
    assert first == strategies.first_wave(settings(base, strategy))
    assert first != strategies.first_wave(settings(base, strategy, seed=7))
    done = results(first, lambda values: values["dropout_rate"])
    assert strategies.second_wave(settings(base, strategy), done) == strategies.second_wave(settings(base, strategy),
                                                                                             done)


@pytest.mark.parametrize("strategy", ["random", "sobol", "tpe"])
def test_every_value_lies_in_its_range_typed_as_the_contract_says(base, strategy):
    resolved = settings(base, strategy, trials=40)
    planned = strategies.first_wave(resolved)
    planned += strategies.second_wave(resolved, results(planned, lambda values: -values["learning_rate"]))
    assert len(planned) == 40 and len({tuple(values.items()) for values in planned}) == 40
    for values in planned:
        assert 1e-5 <= values["learning_rate"] <= 0.5 and 0.5 <= values["momentum"] <= 0.999
        assert isinstance(values["batch_size"], int) and 8 <= values["batch_size"] <= 64
        assert values["optimizer"] in ("adam", "sgd", "rmsprop")
    if strategy == "tpe":
        return  # its second wave follows the objective, not the scale
    # The scales: a log range has as many draws below its geometric middle as above; a reverse log range
    # crowds towards 1.
    rates = [values["learning_rate"] for values in planned]
    assert 12 <= sum(rate < np.sqrt(1e-5 * 0.5) for rate in rates) <= 28
    assert sum(values["momentum"] > 0.95 for values in planned) > len(planned) / 2


def test_sobol_spreads_the_trials_more_evenly_than_random_draws(base):
    space = {"parameters": {name: {"min": 0.0, "max": 1.0} for name in ("dropout_rate", "label_smoothing", "rho")}}

    def discrepancy(strategy):
        resolved = settings(base, strategy, trials=32, parallelism=32, space=space)
        planned = strategies.first_wave(resolved) + strategies.second_wave(resolved, [])
        return qmc.discrepancy(np.array([[values[name] for name in sorted(values)] for values in planned]))

    assert discrepancy("sobol") < 0.6 * discrepancy("random")


def test_tpe_looks_where_the_first_wave_did_well(base):
    space = {"parameters": {"dropout_rate": {"min": 0.0, "max": 1.0}, "label_smoothing": {"min": 0.0, "max": 1.0}}}

    def objective(values):  # best at dropout_rate 0.8; label_smoothing does not matter
        return -abs(values["dropout_rate"] - 0.8)

    def distance(planned):
        return statistics.median(abs(values["dropout_rate"] - 0.8) for values in planned)

    tpe, random = (settings(base, strategy, trials=24, parallelism=8, space=space) for strategy in ("tpe", "random"))
    assert tpe.first_wave == 16
    first = strategies.first_wave(tpe)
    assert first == strategies.first_wave(random)  # TPE starts from random draws
    learned = strategies.second_wave(tpe, results(first, objective))
    assert distance(learned) < 0.5 * distance(strategies.second_wave(random, []))
    # Failed trials (no objective) are learned from as failures, not dropped on the floor or crashed on.
    failed = [{**result, "status": "failed", "objective": None} for result in results(first, objective)[:8]]
    assert len(strategies.second_wave(tpe, failed + results(first, objective)[8:])) == 8


def test_the_grid_is_run_whole_and_once_across_both_waves(base):
    space = {"parameters": {"optimizer": ["adam", "sgd", "rmsprop"], "augmentation": [True, False],
                            "batch_size": [16, 32]}}
    resolved = settings(base, "grid", trials=0, parallelism=4, space=space)
    assert (resolved.trials, resolved.first_wave) == (12, 8)
    planned = strategies.first_wave(resolved) + strategies.second_wave(resolved, [])
    assert sorted(tuple(values[name] for name in ("optimizer", "augmentation", "batch_size")) for values in planned) \
        == sorted(itertools.product(["adam", "sgd", "rmsprop"], [True, False], [16, 32]))


def test_each_planned_trial_carries_all_25_hyperparameters_and_its_objective(base):
    resolved = settings(base, "random", trials=4, parallelism=2)
    items = tuning_trials.plan(resolved, 2, strategies.second_wave(resolved, []), first_index=resolved.first_wave)
    assert [item["trial"] for item in items] == [2, 3] and {item["wave"] for item in items} == {2}
    for item in items:
        assert set(item["hyperparameters"]) == set(parameters.HYPERPARAMETERS)
        assert {name: item["hyperparameters"][name] for name in item["searched"]} == item["searched"]
        assert item["hyperparameters"]["epochs"] == base["epochs"]
        assert item["objective"] == {"metric": "val_accuracy", "direction": "maximize"}
