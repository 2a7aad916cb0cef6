"""plan_trials: check the search space against the contract and plan the first wave of trials."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


def plan_trials(
    settings: Output[Artifact],
    search_space: str,
    search_space_fingerprint: str = "",
    strategy: str = "",
    trials: int = 0,
    objective_metric: str = "",
    objective_direction: str = "",
    parallelism: int = 4,
    gate_metric: str = "",
    top_k: int = 5,
    seed: int = 42,
    augmentation: bool = False,
    augmentation_random_flip: str = "horizontal_and_vertical",
    augmentation_random_rotation: float = 0.2,
    augmentation_random_zoom: float = 0.1,
    batch_size: int = 32,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    binary_mode: bool = False,
    dropout_rate: float = 0.2,
    early_stopping: bool = False,
    early_stopping_min_delta: float = 0.0,
    early_stopping_patience: int = 5,
    epochs: int = 3,
    epsilon: float = 1e-7,
    eval_metric: str = "accuracy",
    image_resize_interpolation: str = "bilinear",
    initial_accumulator_value: float = 0.0001,
    label_smoothing: float = 0.1,
    learning_rate: float = 0.001,
    momentum: float = 0.9,
    optimizer: str = "adam",
    regularizers_l2: float = 0.0001,
    reinitialize_top_layer: str = "Auto",
    rho: float = 0.95,
    train_only_on_top_layer: bool = False,
) -> list:
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.plan_trials_step(**arguments)


plan_trials.__doc__ = docs.docstring(
    "Reads the search space (kic's JSON or the reference's tuning job), checks every value and every pair of "
    "values it can produce against the hyperparameter contract, resolves the strategy, the number of trials and "
    "the objective, and plans the first wave of trials, so that a space that can produce an invalid trial fails "
    "the run in seconds, before any data is read.",
    {
        **docs.tuning_parameter_args("search_space"),
        "search_space_fingerprint": "What the search space file holds now (from snapshot; empty for JSON text): "
                                    "part of the cache key.",
        **docs.tuning_parameter_args("strategy", "trials", "objective_metric", "objective_direction"),
        "parallelism": "How many trials the pipeline runs at once (its ParallelFor's limit): the first wave is "
                       "sized in multiples of it.",
        **docs.parameter_args("gate_metric", "top_k"),
        "seed": "Seed of the sampler, unless the search space names one (the reference's RandomSeed).",
        **docs.hyperparameter_args(),
    },
    {
        "settings": "The resolved search settings (JSON), for the second wave's planning and the selection.",
        # The single return value: kfp.local (2.17) iterates ParallelFor only over a task's `Output`.
        "Output": "The first wave's trials: each with its index, the searched values, all 25 hyperparameters and "
                  "the objective.",
    },
)
plan_trials = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(plan_trials)
