"""TensorFlow's startup in a step, without the noise, with any real device problem.

Importing TensorFlow (2.21) writes, on every machine and before its C++
logging is set up (so ``TF_CPP_MIN_LOG_LEVEL`` cannot stop them), absl's
"All log messages before absl::InitializeLog() ..." and oneDNN's "custom
operations are on"; on a machine without NVIDIA's driver also "Could not find
cuda drivers"; then the first device query logs "failed call to cuInit:
UNKNOWN ERROR (303)" as an error, and tf.data graphs "NodeDef mentions
attribute use_unbounded_threadpool". None of it is news on a CPU machine.

Where a GPU is present (an NVIDIA device file exists), CUDA's errors are the
clue to a broken driver or library path, so they stay: only the two lines that
are noise everywhere go. Either way train says in its own words which devices
it sees (kic.training.devices) and refuses to train on the CPU when GPUs were
asked for.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

NVIDIA_DEVICE_FILES = "/dev/nvidia[0-9]*"
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"

_NOISE = (re.compile(r"All log messages before absl::InitializeLog\(\) is called"),
          re.compile(r"oneDNN custom operations are on"))
_NOISE_WITHOUT_GPU = (re.compile(r"Could not find cuda drivers on your machine"),)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow once, dropping its startup noise (see the module
    docstring); everything else it writes passes through. A log level set by
    the user is kept, and then nothing is dropped."""
    quiet_log_level()
    if "tensorflow" in sys.modules or os.environ.get(LOG_LEVEL) in ("0", "1"):
        import tensorflow  # noqa: F401
        return
    noise = _NOISE if gpu_present() else _NOISE + _NOISE_WITHOUT_GPU
    with stderr_without(noise):
        import tensorflow  # noqa: F401


def quiet_log_level() -> None:
    """TensorFlow's C++ log level, unless set: warnings off; errors too where
    no GPU is present (there they are CUDA's complaints about its absence)."""
    os.environ.setdefault(LOG_LEVEL, "2" if gpu_present() else "3")


def gpu_present() -> bool:
    return bool(glob.glob(NVIDIA_DEVICE_FILES))


@contextlib.contextmanager
def stderr_without(patterns: Sequence[re.Pattern]) -> Iterator[None]:
    """Standard error, file descriptor 2 (where C++ libraries write), held in a
    file while the block runs, then written out without the lines that match
    ``patterns``. A file rather than a pipe: no reader thread, and no
    deadlock however much a library writes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(pattern.search(line) for pattern in patterns)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
