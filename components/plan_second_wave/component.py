"""plan_second_wave: plan the rest of the trials, knowing how the first wave did."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from kic.components import docs
from kic.components.image import CPU_IMAGE


def plan_second_wave(settings: Input[Artifact], first_wave: list) -> list:
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.plan_second_wave_step(**arguments)


plan_second_wave.__doc__ = docs.docstring(
    "Plans the second wave of trials: tpe chooses them from the first wave's results; random, sobol and grid "
    "continue the sequence the seed started.",
    {
        "settings": "The search settings from plan_trials.",
        "first_wave": "The first wave's trial results (status, objective, searched values).",
    },
    {"Output": "The second wave's trials, as plan_trials gives the first's."},
)
plan_second_wave = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(plan_second_wave)
