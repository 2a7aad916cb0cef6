"""The pipeline-parameter options several commands share (--data, --param,
--hyperparameters), and how they become layers for ``kic.parameters``."""

from __future__ import annotations

import argparse


def add_parameter_options(parser: argparse.ArgumentParser, *, data_help: str) -> None:
    """--data, --param and --hyperparameters: the pipeline parameters, the same for run, tune, submit and
    schedule."""
    parser.add_argument("--data", default="", help=data_help)
    add_param_options(parser, "set any pipeline parameter, hyperparameters included (repeatable)")


def add_param_options(parser: argparse.ArgumentParser, param_help: str) -> None:
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=param_help)
    parser.add_argument("--hyperparameters", default="", metavar="FILE.json",
                        help="the reference algorithm's hyperparameter JSON (values may be strings)")


def parameter_layers(args: argparse.Namespace) -> tuple[list[dict], list]:
    """The pipeline parameters that --hyperparameters, --param and --data set,
    as layers over the defaults (lowest first, for ``parameters.resolve``),
    and a problem for each malformed --param."""
    from kic.config import read_json_object

    assigned, malformed = _assignments(args.param)
    layers = []
    if args.hyperparameters:  # only what the file sets: the rest keeps the layers below it
        layers.append(read_json_object(args.hyperparameters))
    layers.append(assigned)
    if args.data:
        layers.append({"data_source": args.data})
    return layers, malformed


def _assignments(assignments: list[str]) -> tuple[dict[str, str], list]:
    """``--param NAME=VALUE`` options as a dict, and a problem for each malformed one."""
    from kic.errors import Problem

    values, problems = {}, []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            problems.append(Problem("--param", assignment, "expected NAME=VALUE"))
            continue
        values[name.strip()] = value
    return values, problems
