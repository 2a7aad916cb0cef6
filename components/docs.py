"""Docstrings for components and the pipeline, with parameter descriptions
taken from the one definition of each (``kic.parameters``, which takes the
hyperparameters' from ``kic.config.TrainingConfig``), so the compiled YAML
describes every input without a second copy to drift."""

from __future__ import annotations

import textwrap

from kic import config, parameters


def hyperparameter_args() -> dict[str, str]:
    return config.descriptions()


def pipeline_parameter_args(target: str = "") -> dict[str, str]:
    """The descriptions of the pipeline parameters (of ``target``'s pipeline; "": all)."""
    return {parameter.name: parameter.help for parameter in parameters.for_target(target)}


def parameter_args(*names: str) -> dict[str, str]:
    """The pipeline's description of each named parameter."""
    return {name: parameters.PARAMETERS_BY_NAME[name].help for name in names}


def docstring(summary: str, args: dict[str, str], returns: dict[str, str] | None = None) -> str:
    """Google-style docstring: KFP copies Args/Returns into the compiled spec."""
    parts = [summary.strip(), "", "Args:"]
    for name, text in args.items():
        parts.append(textwrap.fill(f"{name}: {text}", width=100, initial_indent="    ",
                                   subsequent_indent="        "))
    if returns:
        parts += ["", "Returns:"]
        for name, text in returns.items():
            parts.append(textwrap.fill(f"{name}: {text}", width=100, initial_indent="    ",
                                       subsequent_indent="        "))
    return "\n".join(parts) + "\n"


def tuning_parameter_args(*names: str) -> dict[str, str]:
    """The tuning pipeline's description of each named tuning parameter."""
    from kic.tuning.settings import TUNING_PARAMETERS_BY_NAME

    return {name: TUNING_PARAMETERS_BY_NAME[name].help for name in names}
