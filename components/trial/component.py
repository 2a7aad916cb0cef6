"""trial: train one trial of a search; a failed trial is recorded, not raised."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kic.components import docs
from kic.components.image import GPU_IMAGE


def trial(
    examples: Input[Dataset],
    model: Output[Model],
    trial_metrics: Output[Metrics],
    trial: dict,
    backbone: str = "mobilenet_v2_100_224",
    pretrained_weights: str = "imagenet",
    image_size: int = 0,
    base_model_uri: str = "",
    base_model_fingerprint: str = "",
    pretrained_weights_fingerprint: str = "",
    seed: int = 42,
    required_gpus: int = 0,
    precision: str = "auto",
    jit_compile: str = "auto",
    checkpoint_uri: str = "",
    checkpoint_every_steps: int = 1000,
) -> dict:
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.trial_step(**arguments)


trial.__doc__ = docs.docstring(
    "Trains the model with one trial's hyperparameters, as train does, and records the trial: its objective at "
    "the best epoch, epochs run, seconds and status. A trial whose training fails (an error, a batch that does "
    "not fit in memory, a loss that turned NaN) is recorded as failed with the reason, and the search goes on.",
    {
        "examples": "The prepared dataset from prepare.",
        "trial": "The trial from plan_trials or plan_second_wave: its index, all 25 hyperparameters and the "
                 "objective.",
        **docs.parameter_args("backbone", "pretrained_weights", "image_size", "base_model_uri"),
        "base_model_fingerprint": "What base_model_uri holds now (from snapshot): part of the cache key.",
        "pretrained_weights_fingerprint": "What the pretrained weights file holds now (from snapshot; empty for "
                                          "imagenet and none): part of the cache key.",
        **docs.parameter_args("seed"),
        "required_gpus": "Fail the trial at once when fewer GPUs are visible (the pipeline passes "
                         "accelerator_count); 0: train on whatever the machine has.",
        **docs.parameter_args("precision", "jit_compile"),
        "checkpoint_uri": "Where trials keep their checkpoints, each in its own trial-N folder; empty: a folder of "
                          "this trial's task under the pipeline root.",
        **docs.parameter_args("checkpoint_every_steps"),
    },
    {
        "model": "The trial's model (best epoch), as train writes it, and trial.json (the trial's record); only "
                 "trial.json when the trial failed.",
        "trial_metrics": "The trial's objective, epochs run and seconds.",
        "Output": "The trial's record: index, wave, status, objective, searched values, epochs run, best epoch, "
                  "seconds, the best epoch's metrics and, when it failed, why.",
    },
)
trial = dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)(trial)
