"""kic backbones and kic validate: what kic accepts, the backbones and the
parameters, answered in a second or two (neither imports TensorFlow nor KFP)."""

from __future__ import annotations

import argparse
import json

from kic.cli.output import note


def add_commands(commands) -> None:
    backbones = commands.add_parser("backbones", help="list the supported backbones")
    backbones.set_defaults(handler=_backbones)

    validate = commands.add_parser("validate", help="check a JSON file of hyperparameters (the reference "
                                                    "algorithm's format) or of any pipeline parameters")
    validate.add_argument("hyperparameters", metavar="FILE.json")
    validate.add_argument("--check-uris", action="store_true",
                          help="also look up the sources, models and weights the file names (where the pipeline "
                               "runs is where this matters; ImageNet weights are asked of Keras)")
    validate.set_defaults(handler=_validate)


def _backbones(_args: argparse.Namespace) -> int:
    from kic.model import backbone_registry

    print(backbone_registry.format_registry())
    return 0


def _validate(args: argparse.Namespace) -> int:
    """The reference's hyperparameter JSON, or a JSON object of any pipeline
    parameters; prints the hyperparameters (defaults filled in) and the other
    parameters given, typed. Values and their combinations are checked; URIs
    only with --check-uris, since whether they can be reached depends on
    where the pipeline will run."""
    from kic import parameters
    from kic.config import TrainingConfig, read_json_object

    typed = parameters.validate(read_json_object(args.hyperparameters), reachability=args.check_uris, note=note)
    hyperparameters = TrainingConfig.from_dict({name: value for name, value in typed.items()
                                                if name in parameters.HYPERPARAMETERS})
    others = {name: value for name, value in typed.items() if name not in parameters.HYPERPARAMETERS}
    print(json.dumps({**hyperparameters.to_dict(), **others}, indent=2))
    return 0
