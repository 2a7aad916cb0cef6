"""The devices training sees, said at the start, and no silent CPU training
when GPUs were asked for.

On a cluster a GPU can be missing for reasons that all look the same from
inside the pod (TensorFlow just trains on the CPU, hours slower): the pod got
no GPU, the NVIDIA driver libraries are not on the library path, or the image
has a CPU-only TensorFlow. ``require_gpus`` fails in seconds instead, naming
what it found.
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf

from kic.errors import UserError

# Where GKE puts the NVIDIA driver libraries (the GPU image has it on LD_LIBRARY_PATH).
GKE_DRIVER_DIR = "/usr/local/nvidia/lib64"


class NoGpuError(UserError):
    """GPUs were asked for and none is visible."""


def describe() -> str:
    """One line: the devices TensorFlow sees, GPUs by name."""
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        names.append(details.get("device_name", gpu.name)
                     + (f" (compute {capability[0]}.{capability[1]})" if capability else ""))
    cpus = len(tf.config.list_physical_devices("CPU"))
    return f"{len(gpus)} GPU(s){': ' + ', '.join(names) if names else ''}; {cpus} CPU device(s), " \
           f"{os.cpu_count()} cores"


def require_gpus(count: int) -> None:
    """Raises NoGpuError, with what is known of the likely cause, when fewer
    than ``count`` GPUs are visible."""
    if count < 1:
        return
    visible = len(tf.config.list_physical_devices("GPU"))
    if visible >= count:
        return
    raise NoGpuError(f"train asked for {count} GPU(s) and sees {visible}; it would train on the CPU, many times "
                     "slower. Likely causes: " + "; ".join(_likely_causes())
                     + ". To train on the CPU on purpose, set accelerator_count=0.")


def _likely_causes() -> list[str]:
    causes = []
    if not tf.test.is_built_with_cuda():
        causes.append("this TensorFlow has no CUDA support (train must run in the GPU image, kic-gpu)")
    device_files = glob.glob("/dev/nvidia[0-9]*")
    if not device_files:
        causes.append("no GPU was given to this pod or machine (/dev/nvidia* is absent: no GPU node, the GPU node "
                      "pool's taints not tolerated, or accelerator settings ignored by an old backend)")
    library_path = os.environ.get("LD_LIBRARY_PATH", "")
    if device_files and os.path.isdir(GKE_DRIVER_DIR) and GKE_DRIVER_DIR not in library_path:
        causes.append(f"the NVIDIA driver libraries in {GKE_DRIVER_DIR} are not on LD_LIBRARY_PATH "
                      f"({library_path or 'unset'})")
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        causes.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU")
    return causes or ["the GPU is present but TensorFlow cannot use it (see the CUDA messages above)"]
