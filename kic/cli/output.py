"""What every kic command prints besides its own result: notes, warnings,
prepare's progress bar, and the summary at the end of a local run."""

from __future__ import annotations

import os
import sys

LOGS_DIR = "logs"  # under a local run's output folder: run.log and <step>.log


def note(message: str) -> None:
    print(f"kic: note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    from kic.redact import redact

    print(redact(f"kic: warning: {message}"), file=sys.stderr, flush=True)


class ProgressBar:
    """Draws prepare's "N/M images" progress as one bar that redraws in place."""

    WIDTH = 30

    def __call__(self, message: str) -> None:
        counts = message.split(" ", 2)[1] if message.count("/") and " images " in message else ""
        done, _, total = counts.partition("/")
        if done.isdigit() and total.isdigit() and int(total):
            filled = self.WIDTH * int(done) // int(total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            print(f"\r[{bar}] {message.removeprefix('prepare: ')}", end="", flush=True)
            if done == total:
                print()
        else:
            print(message, flush=True)


def print_summary(outputs, output: str, seconds: float, command: str = "run", extra: tuple[str, ...] = ()) -> None:
    """Where a finished local run (``kic run``, ``kic tune``) left its model, metrics, reports and logs."""
    from kic.orchestration import local_run

    metrics = outputs.metrics
    headline = [name for name in ("accuracy", "top_5_accuracy", "precision", "recall", "auc", "prc", "log_loss")
                if name in metrics]
    print("\n" + "=" * 72)
    print(f"kic {command} finished in {seconds / 60:.1f} min")
    print("test metrics: " + ", ".join(f"{name} {metrics[name]:.4f}" for name in headline))
    if outputs.model:
        print(f"model:        {os.path.join(output, 'model.tar.gz')} (unpacked in {outputs.model})")
    else:
        # The run succeeded: a blocked model is a verdict, not a failure; LATEST stays where it was.
        print("model:        " + (outputs.blessing or {}).get("summary", "not exported: the quality gate did not "
                                                                          "bless it"))
        print(f"              (why, in full: {os.path.join(output, local_run.EVALUATION_REPORT_HTML)})")
    for reason in (outputs.blessing or {}).get("reasons", []):
        print(f"gate:         {reason}")
    print(f"metrics:      {os.path.join(output, local_run.METRICS_JSON)}")
    if outputs.predictions:
        print(f"predictions:  {outputs.predictions}")
    print(f"reports:      {os.path.join(output, 'data_report.html')}, "
          f"{os.path.join(output, local_run.EVALUATION_REPORT_HTML)}")
    for line in extra:
        print(line)
    logs = os.path.join(output, LOGS_DIR)
    if os.path.isdir(logs):
        print(f"logs:         {logs} ({', '.join(sorted(os.listdir(logs)))})")
    print(f"all steps:    {outputs.run_dir}")
    print("=" * 72)
