"""An output folder of kic's local commands: owned by one run at a time, and kic clears only what kic wrote.

Two runs into one folder would empty each other's checkpoints and collect each
other's models, so a run holds an exclusive ``flock`` on ``.kic-lock`` in the
folder for as long as it lives. The OS drops the lock when the process ends,
however it ends, so a lock is never stale; the file's content (pid, host,
command, start) only serves to name the holder to a run that finds it busy.

The folders a run empties before it writes anew (``model/``, ``logs/``) have
the files kic wrote in them listed in ``.kic-files`` beside them (in the
output folder, so that the folders hold only what they always held). A file
that is not on it is a user's: kic refuses to start, naming it, rather than
delete it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator

from kic.errors import UserError

LOCK_FILE = ".kic-lock"
MANIFEST = ".kic-files"


class OutputBusyError(UserError):
    """Another run is writing to the same output folder."""


class ForeignFilesError(UserError):
    """A folder kic would clear holds files that kic did not write."""


def check_not_a_file(path: str, option: str = "--output") -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path} is a file, not a folder: name a folder (it is created if missing)")


@contextlib.contextmanager
def locked(folder: str, command: str = "") -> Iterator[None]:
    """Holds ``folder`` for this process; OutputBusyError, naming the holder, when another one holds it."""
    check_not_a_file(folder)
    os.makedirs(folder, exist_ok=True)
    handle = open(os.path.join(folder, LOCK_FILE), "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise OutputBusyError(f"{folder} is in use by another kic run ({_describe(handle.read())}); wait for "
                                  "it to finish, stop it, or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": command or " ".join(sys.argv),
                                 "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the OS would at exit anyway


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f"pid {holder['pid']} on {holder['host']}, since {holder['since']}: {holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet said which"  # between its flock and its write


# ------------------------------------------------------------ what kic wrote
def record(folder: str, relative_paths: Iterable[str]) -> None:
    """Adds files under ``folder`` to the list of those kic wrote."""
    prefix = _prefix(folder)
    entries = _entries(folder) | {prefix + path for path in relative_paths}
    with open(_manifest(folder), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{entry}\n" for entry in sorted(entries)))


def files(folder: str) -> list[str]:
    """Every file under ``folder``, relative to it."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, name), folder) for name in names]
    return sorted(found)


def foreign(folder: str, ours: Callable[[str], bool] = lambda _: False) -> list[str]:
    """The files under ``folder`` kic did not write: neither on its list, nor, for a folder without one (an
    older kic's), ``ours``."""
    if not os.path.isdir(folder):
        return []
    listed = _listed(folder)
    return [path for path in files(folder) if not (path in listed if listed is not None else ours(path))]


def refuse_foreign(folders: dict[str, Callable[[str], bool]]) -> None:
    """ForeignFilesError listing every file kic did not write in the folders kic is about to clear."""
    found = [os.path.join(folder, path) for folder, ours in folders.items() for path in foreign(folder, ours)]
    if found:
        shown = "\n".join(f"  {path}" for path in found[:20]) + (f"\n  ... and {len(found) - 20} more"
                                                               if len(found) > 20 else "")
        raise ForeignFilesError(f"kic would clear folders that hold files it did not write; move them elsewhere "
                                f"(or choose another output folder), nothing was deleted:\n{shown}")


def clear(folder: str, ours: Callable[[str], bool] = lambda _: False) -> None:
    """Removes what kic wrote under ``folder`` (and folders left empty); a user's files stay."""
    if not os.path.isdir(folder):
        return
    theirs = set(foreign(folder, ours))
    for path in files(folder):
        if path not in theirs:
            os.remove(os.path.join(folder, path))
    prefix = _prefix(folder)
    kept = {entry for entry in _entries(folder) if not entry.startswith(prefix)}
    with open(_manifest(folder), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{entry}\n" for entry in sorted(kept)))
    for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):  # not empty: a user's files are in it
            os.rmdir(root)


def _manifest(folder: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(folder)), MANIFEST)


def _prefix(folder: str) -> str:
    return os.path.basename(os.path.abspath(folder)) + "/"


def _entries(folder: str) -> set[str]:
    try:
        with open(_manifest(folder), encoding="utf-8") as handle:
            return {line.rstrip("\n") for line in handle if line.strip()}
    except FileNotFoundError:
        return set()


def _listed(folder: str) -> set[str] | None:
    """What the list says kic wrote under ``folder``; None when it says nothing of it."""
    prefix = _prefix(folder)
    listed = {entry[len(prefix):] for entry in _entries(folder) if entry.startswith(prefix)}
    return listed or None
