"""Ctrl-C or SIGTERM stops a local run whole: its running step, that step's own workers, and their temporary files.

kfp.local runs each step as a child process of ``kic run`` in the same process
group. Ctrl-C in a terminal reaches the whole group, but SIGTERM (``kill``, a
scheduler, a CI timeout) reaches ``kic run`` alone, and its steps and their
image workers would train on as orphans. So on either signal every descendant
is sent SIGTERM at once, and SIGKILL a few seconds later if it still lives.

The steps make temporary copies (an unpacked model, a decoded-image cache, a
checkpoint being written): ``TMPDIR`` points the steps at a folder of this
run's, removed when it ends however it ends. A run killed outright (SIGKILL)
cannot clean up; its folder is removed by the next run, which knows it as
stale because no process holds the flock on its ``.owner`` file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

SCRATCH_PREFIX = "kic-run-"
OWNER_FILE = ".owner"
STALE_AFTER_SECONDS = 60
GRACE_SECONDS = 3.0  # for a step to end on SIGTERM (TensorFlow's ops do not stop at once)

received: int | None = None  # the signal that stopped the run, if one did
children_stopped: int = 0  # the child processes the signal stopped at once (a local run's steps)


@contextlib.contextmanager
def stoppable_run(*, step_in_process: bool = False) -> Iterator[str]:
    """Runs the block with SIGINT and SIGTERM stopping every child process, and TMPDIR (for the children and
    this process) a folder of the run's own, which it yields; on the way out, by return, exception or signal,
    stops whatever children are left and removes the folder. A signal arrives as KeyboardInterrupt (plain, for
    subprocess.Popen waits only briefly on that one).

    ``step_in_process``: the block runs a step itself (``kic prepare``, ``kic train``, ``kic predict``), whose
    workers are this process's children: the signal only interrupts the block, whose process pool then ends
    its workers as it unwinds, and only what is left after it is stopped."""
    global received, children_stopped
    received, children_stopped = None, 0
    _remove_stale_scratch()
    scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    owner = open(os.path.join(scratch, OWNER_FILE), "w")
    fcntl.flock(owner, fcntl.LOCK_EX)
    # Not what lived before the run (a test's servers, when the run is called in process).
    already = set(descendants(os.getpid()))
    previous_tmpdir, previous_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = scratch, scratch

    signalled: list[int] = []  # once their parent step is gone, workers are no longer this process's descendants

    def on_signal(signum, _frame):
        global received, children_stopped
        if received is None:
            received = signum
            if not step_in_process:
                # Now, before the KeyboardInterrupt below unwinds KFP's waits on its step.
                signalled.extend(stop_children(grace=0, spare=already))
                children_stopped = len(signalled)
        raise KeyboardInterrupt

    previous_handlers = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield scratch
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        stop_children(grace=GRACE_SECONDS, spare=already, also=signalled)
        if previous_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_tmpdir
        tempfile.tempdir = previous_tempdir
        owner.close()
        shutil.rmtree(scratch, ignore_errors=True)


def stop_children(grace: float, spare: set[int] = frozenset(), also: list[int] = ()) -> list[int]:
    """SIGTERM to every descendant of this process but ``spare`` (found all at once: a step that dies first
    would leave its workers to init), and to ``also``, then, ``grace`` seconds on, SIGKILL to those still
    alive; returns the processes signalled."""
    pids = sorted({pid for pid in descendants(os.getpid()) if pid not in spare} | {pid for pid in also if _alive(pid)})
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    if not grace:
        return pids
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    _reap(pids)
    return pids


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in _parents():
        children.setdefault(parent, []).append(child)
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _parents() -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every process: /proc on Linux, ps elsewhere."""
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                        fields = handle.read().rpartition(")")[2].split()
                except OSError:
                    continue
                if fields[0] != "Z":
                    yield int(entry), int(fields[1])
        return
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, ppid = line.split()
        yield int(pid), int(ppid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the process itself
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _reap(pids: list[int]) -> None:
    """Collects those of ``pids`` that are this process's own dead children, so they do not count as alive."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _remove_stale_scratch() -> None:
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}*")):
        try:
            if time.time() - os.path.getmtime(folder) < STALE_AFTER_SECONDS:
                continue  # a run starting now may not hold its flock yet
            with open(os.path.join(folder, OWNER_FILE)) as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its run is gone
        except (OSError, BlockingIOError):
            continue  # a live run's, or not one of ours
        shutil.rmtree(folder, ignore_errors=True)


def exit_code() -> int:
    """The shell's code for a process ended by the signal received (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (received or signal.SIGINT)


def signal_name() -> str:
    return signal.Signals(received or signal.SIGINT).name

