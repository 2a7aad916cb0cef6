"""Docstrings for components and the pipeline, with the hyperparameter
descriptions taken from the one contract (``kic.config.TrainingConfig``), so
the compiled YAML describes every input without a second copy to drift."""

from __future__ import annotations

import dataclasses
import textwrap

from kic.config import TrainingConfig


def hyperparameter_args() -> dict[str, str]:
    return {field.name: field.metadata["help"] + _valid_text(field)
            for field in dataclasses.fields(TrainingConfig)}


def _valid_text(field: dataclasses.Field) -> str:
    meta = field.metadata
    if meta["choices"]:
        return " One of: " + ", ".join(meta["choices"]) + "."
    if meta["low"] is not None and meta["high"] is not None:
        return f" Range [{meta['low']:g}, {meta['high']:g}]."
    if meta["low"] is not None:
        return f" At least {meta['low']:g}."
    return ""


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
