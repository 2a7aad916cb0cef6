"""The kic command: one module per family of commands, each adding its own
subcommands to the parser below.

- ``local_runs``: kic run, kic tune (the pipeline on this machine)
- ``cluster``: kic submit, kic schedule, kic compile (Kubeflow Pipelines, Vertex AI)
- ``single_steps``: kic prepare, kic train, kic predict (one step on its own)
- ``catalog``: kic backbones, kic validate (what kic accepts)

``options`` holds the parameter options they share, ``output`` what they print
besides their result. Every command checks its parameters through the one
front door (``kic.parameters``) before it does any work. Listing and
validating import neither TensorFlow nor KFP, so they answer in a second or
two; a command that does import TensorFlow does so without its start-up noise
(``kic.runtime.quiet_startup``).
"""

from __future__ import annotations

import argparse
import sys

from kic.cli import catalog, cluster, local_runs, single_steps
from kic.errors import ParameterError, UserError

DESCRIPTION = ("kic: run the pipeline locally or on a cluster, schedule it, search hyperparameters, prepare, "
               "validate, predict, compile, list backbones.")
EPILOG = ("TensorFlow's start-up messages (oneDNN, CUDA's absence) are left out; TF_CPP_MIN_LOG_LEVEL=0 shows them, "
          "and every other TensorFlow log.")
COMMAND_FAMILIES = (local_runs, cluster, single_steps, catalog)


def main(argv: list[str] | None = None) -> int:
    from kic.runtime import quiet_startup

    args = _parser().parse_args(argv)
    with quiet_startup.tensorflow_imports_quietly():
        remember_secrets = getattr(args, "remember_secrets", None)  # submit and schedule
        if remember_secrets is None:
            return _handle(args)
        return _handle_redacted(args, remember_secrets)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kic", description=DESCRIPTION, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)
    for family in COMMAND_FAMILIES:
        family.add_commands(commands)
    return parser


def _handle(args: argparse.Namespace) -> int:
    from kic.redact import redact

    try:
        return args.handler(args)
    except ParameterError as error:
        print(redact(f"kic: {error}"), file=sys.stderr)
        return 2
    except UserError as error:  # anything else keeps its traceback: it is a bug
        print(redact(f"kic: error: {error}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (kic.orchestration.shutdown)
        from kic.orchestration import shutdown

        print(f"\nkic: stopped by {shutdown.signal_name()}"
              + ("; so were the steps it had started" if shutdown.children_stopped else ""), file=sys.stderr)
        return shutdown.exit_code()


def _handle_redacted(args: argparse.Namespace, remember_secrets) -> int:
    """``_handle``, for a command given credentials: whatever a library prints, and a bug's traceback, pass
    through redaction too."""
    from kic import redact

    remember_secrets(args)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = redact.RedactingStream(sys.stdout), redact.RedactingStream(sys.stderr)
    try:
        return _handle(args)
    except Exception:  # a bug: its traceback, redacted
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        redact.forget()
