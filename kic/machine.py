"""What this machine offers the process: its CPU cores."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (a container's or a pod's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
