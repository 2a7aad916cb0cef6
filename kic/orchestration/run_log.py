"""What a local run shows a person, and the whole of it in files.

kfp.local runs each step as a subprocess, reads its output (stdout and
stderr merged) from a pipe and ``print``s it line by line in this process,
and writes its own progress through the root logger onto a handler bound to
``sys.stdout``. So one ``contextlib.redirect_stdout`` sees everything in
order, and a filter on the root logger (filters survive the handlers KFP
swaps in and out) sees KFP's records, from which it learns which step runs
and how it ended. No file descriptors are touched: the steps' output reaches
this process through KFP's pipe, and KFP's logging stays as KFP set it up.

Every line goes to ``run.log`` and to the running step's ``<step>.log``. The
terminal gets, unless ``verbose``, each step's start and end with its
duration, and of the steps' own lines (kic's ``[HH:MM:SS] ...`` lines) those
in ``SHOWN``: the epoch lines, warnings, failures, the devices training sees,
prepare's progress. Not the executor's input JSON, KFP's artifact listings or
library noise: those are in the files.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import os
import re
import sys
import time
from typing import TextIO

from kic.orchestration import output_folder

RUN_LOG = "run.log"
TAIL_LINES = 15

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KIC_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<message>.*)$")
SHOWN = (
    re.compile(r"^Epoch \d+/\d+ "),  # the epoch lines, with the time left
    re.compile(r"^[\w-]+: warning: "),  # what a step warns about
    re.compile(r"^[\w-]+ failed: "),  # a step's own account of its failure
    re.compile(r"^train: (devices:|best epoch )"),  # what training runs on, and what it kept
    re.compile(r"^prepare: \d+/\d+ images "),  # progress through a large dataset
)
_STARTED = re.compile(r"^Executing task '(?P<step>[^']+)'")
_FINISHED = re.compile(r"^Task '(?P<step>[^']+)' finished with status (?P<status>\w+)")
_CACHED = re.compile(r"^Task (?P<step>\S+) cache hit")
_PIPELINE = re.compile(r"^(Running pipeline|Pipeline) ")


@dataclasses.dataclass
class Step:
    name: str
    log_path: str
    started: float
    seconds: float | None = None
    status: str = "RUNNING"  # RUNNING, SUCCESS, FAILURE or CACHED
    tail: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200))
    _json_indent: str | None = None  # inside the executor's input, dumped as indented JSON

    def take(self, line: str) -> None:
        """Keeps the step's last lines, but not the executor's input JSON."""
        indent = line[:len(line) - len(line.lstrip())]
        if self._json_indent is not None:
            if line.strip() == "}" and indent == self._json_indent:
                self._json_indent = None
        elif line.strip() == "{" and self.tail and self.tail[-1].endswith("Got executor_input:"):
            self._json_indent = indent
        else:
            self.tail.append(line.strip())


class RunLog(contextlib.AbstractContextManager):
    """Captures a local run started inside the ``with`` block (see the module
    docstring); the logs kic wrote in ``folder`` are removed first (a user's files
    stay), so no earlier run's logs pass for this one's."""

    def __init__(self, folder: str, *, verbose: bool = False, terminal: TextIO | None = None):
        self.folder, self.verbose = folder, verbose
        self.terminal = terminal or sys.stdout
        self.steps: dict[str, Step] = {}
        self._current: Step | None = None
        self._files: dict[str, TextIO] = {}
        self._partial = ""
        self._redirect: contextlib.redirect_stdout | None = None

    # ------------------------------------------------------------ context
    def __enter__(self) -> RunLog:
        output_folder.clear(self.folder, written_by_kic)  # a user's files there stay
        os.makedirs(self.folder, exist_ok=True)
        self._run_file = self._open(RUN_LOG)
        root = logging.getLogger()
        # KFP also logs outside its logging context (a cache hit, a skipped task) at
        # INFO, which the root logger's usual level drops and logging.basicConfig,
        # called by logging.info on a root without handlers, would print: a handler
        # of ours takes those records, and KFP's context swaps it out while it runs.
        self._root_state = root.level, root.handlers[:]
        self._handler = _Handler(self)
        root.handlers[:] = [self._handler]
        root.setLevel(logging.INFO)
        root.addFilter(self._on_record)
        self._redirect = contextlib.redirect_stdout(_LineWriter(self._on_text))
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._redirect.__exit__(*exc_info)
        root = logging.getLogger()
        root.removeFilter(self._on_record)
        level, handlers = self._root_state
        root.setLevel(level)
        root.handlers[:] = handlers
        if self._partial:
            self._on_line(self._partial)
        for handle in self._files.values():
            handle.close()

    # ------------------------------------------------------------ queries
    @property
    def failed_step(self) -> Step | None:
        return next((step for step in self.steps.values() if step.status == "FAILURE"), None)

    def last_lines(self, step: Step, count: int = TAIL_LINES) -> list[str]:
        """The step's own last lines (not KFP's account of it), blank ones left out."""
        return [line for line in step.tail if line.strip()][-count:]

    # ------------------------------------------------------------ routing
    def _on_record(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if match := _STARTED.match(message):
            self._start(match["step"])
        elif (match := _FINISHED.match(message)) and match["step"] in self.steps:
            step = self.steps[match["step"]]
            step.seconds, step.status = time.perf_counter() - step.started, match["status"]
            ending = "finished in" if step.status == "SUCCESS" else "FAILED after"
            self._show(f"{step.name}: {ending} {_duration(step.seconds)}")
        elif _PIPELINE.match(message):
            self._current = None
        elif match := _CACHED.match(message):
            step = self._start(match["step"], announce=False)
            step.seconds, step.status = 0.0, "CACHED"
            self._show(f"{step.name}: reused an earlier run's outputs (cache)")
        return True

    def _start(self, name: str, announce: bool = True) -> Step:
        step = Step(name=name, log_path=os.path.join(self.folder, f"{name}.log"), started=time.perf_counter())
        self.steps[name] = self._current = step
        if announce:
            self._show(f"{name}: started")
        return step

    def _on_text(self, text: str) -> None:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._on_line(line)

    def _on_line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        self._write(line + "\n")
        if self._current is not None and self._current.status == "RUNNING":  # the step's own output
            self._current.take(line)
        if self.verbose:
            self._print(raw)
            return
        match = _KIC_LINE.match(line.strip())
        if match and any(pattern.search(match["message"]) for pattern in SHOWN):
            self._print(line.strip())

    def _write(self, text: str) -> None:
        """To run.log, and to the file of the step that started last (KFP's
        account of a step follows the step's own output)."""
        self._run_file.write(text)
        step = self._current
        if step is not None:
            if step.name not in self._files:
                self._files[step.name] = self._open(os.path.basename(step.log_path))
            self._files[step.name].write(text)

    def _show(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        self._write(line + "\n")
        if not self.verbose:
            self._print(line)

    def _print(self, line: str) -> None:
        self.terminal.write(line + "\n")
        self.terminal.flush()

    def _open(self, name: str) -> TextIO:
        output_folder.record(self.folder, [name])
        return open(os.path.join(self.folder, name), "w", encoding="utf-8", buffering=1)


def written_by_kic(name: str) -> bool:
    """Whether a file in a logs folder that has no list of kic's files (an older kic's) is a log kic wrote."""
    return os.sep not in name and name.endswith(".log")


class _Handler(logging.Handler):
    """KFP's records outside its own logging context: to the files, and
    warnings to the terminal too."""

    def __init__(self, run_log: RunLog):
        super().__init__(logging.INFO)
        self.run_log = run_log
        self.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = _ANSI.sub("", self.format(record))
        self.run_log._write(line + "\n")
        if self.run_log.verbose or record.levelno >= logging.WARNING:
            self.run_log._print(line)


class _LineWriter(io.TextIOBase):
    """A text stream that hands what is written to a function."""

    def __init__(self, write):
        self._write = write

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._write(text)
        return len(text)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
