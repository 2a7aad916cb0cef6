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
import importlib.abc
import importlib.util
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
    with tensorflow_imports_quietly():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def tensorflow_imports_quietly() -> Iterator[None]:
    """While the block runs, TensorFlow's first import, wherever it happens
    (``import keras``, a check deep in kic.parameters), drops the startup
    noise as ``import_tensorflow_quietly`` does: for the kic command, which
    imports TensorFlow only when the work needs it. A log level set by the
    user (``TF_CPP_MIN_LOG_LEVEL=0`` or ``1``) is kept, and then nothing is
    dropped."""
    quiet_log_level()
    if "tensorflow" in sys.modules or os.environ.get(LOG_LEVEL) in ("0", "1"):
        yield
        return
    finder = _QuietTensorFlowFinder(_NOISE if gpu_present() else _NOISE + _NOISE_WITHOUT_GPU)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # already gone: TensorFlow was imported
            sys.meta_path.remove(finder)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders do, once, and has it loaded
    with standard error held and filtered (``stderr_without``): the noise is
    written by its C++ libraries as the package's ``__init__`` loads them."""

    def __init__(self, noise: Sequence[re.Pattern]):
        self.noise = noise

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and the search below goes to the other finders
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self.noise)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, noise: Sequence[re.Pattern]):
        self.loader, self.noise = loader, noise

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # TensorFlow sees its own loader
        with stderr_without(self.noise):
            self.loader.exec_module(module)


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
