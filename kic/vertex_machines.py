"""Vertex AI's machines for train's CustomJob: which machine series carries
which NVIDIA GPU, how many of them one machine can have, the machine train
gets when none is named, and the checks of ``train_replica_count``,
``train_machine_type``, ``accelerator_type`` and ``accelerator_count``.

Rules only (no KFP, no Google Cloud client), so the front door
(``kic.parameters``) checks a run's machines before anything is compiled;
``kic.pipelines.custom_job`` builds the CustomJob from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kic.errors import Problem

VERTEX_GPU_PREFIX = "NVIDIA_"  # Vertex AI's accelerator types for NVIDIA GPUs

_MACHINE_TYPE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)+")
# The machine series each Vertex AI GPU comes on; types not named here are not checked.
GPU_MACHINE_SERIES: Mapping[str, tuple[str, ...]] = {
    "NVIDIA_L4": ("g2-standard",),
    "NVIDIA_TESLA_A100": ("a2-highgpu", "a2-megagpu"),
    "NVIDIA_A100_80GB": ("a2-ultragpu",),
    "NVIDIA_H100_80GB": ("a3-highgpu",),
    "NVIDIA_H100_MEGA_80GB": ("a3-megagpu",),
    "NVIDIA_H200_141GB": ("a3-ultragpu",),
    "NVIDIA_B200": ("a4-highgpu",),
    "NVIDIA_TESLA_T4": ("n1-standard", "n1-highmem", "n1-highcpu"),
    "NVIDIA_TESLA_V100": ("n1-standard", "n1-highmem", "n1-highcpu"),
    "NVIDIA_TESLA_P100": ("n1-standard", "n1-highmem", "n1-highcpu"),
    "NVIDIA_TESLA_P4": ("n1-standard", "n1-highmem", "n1-highcpu"),
}
# How many GPUs of each type one machine can have in Vertex AI custom training (its compute table: N1 machines
# take T4, P4 and P100 by 1, 2 or 4 and V100 up to 8; G2, A2, A3 and A4 machines come with theirs; H100 on
# a3-highgpu-1g, -2g, -4g and -8g, the Mega, H200 and B200 on 8-GPU machines only).
GPU_COUNTS: Mapping[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_L4": (1, 2, 4, 8),
    "NVIDIA_TESLA_A100": (1, 2, 4, 8, 16),
    "NVIDIA_A100_80GB": (1, 2, 4, 8),
    "NVIDIA_H100_80GB": (1, 2, 4, 8),
    "NVIDIA_H100_MEGA_80GB": (8,),
    "NVIDIA_H200_141GB": (8,),
    "NVIDIA_B200": (8,),
}
# Machines that come with their GPUs: how many a G2 machine has by its vCPUs (A2, A3 and A4 names end in -<N>g).
_G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}
_GPU_MACHINES = ("a2-highgpu-1g", "a2-highgpu-2g", "a2-highgpu-4g", "a2-highgpu-8g", "a2-megagpu-16g",
                 "a2-ultragpu-1g", "a2-ultragpu-2g", "a2-ultragpu-4g", "a2-ultragpu-8g", "a3-highgpu-1g",
                 "a3-highgpu-2g", "a3-highgpu-4g", "a3-highgpu-8g", "a3-megagpu-8g", "a3-ultragpu-8g",
                 "a4-highgpu-8g")
_GPU_SERIES = ("g2-", "a2-", "a3-", "a4-")


# The smallest machine of each series for a number of GPUs, with at least train's 8 vCPUs and 32 GB for one GPU
# (kic.pipelines.placement.STEP_RESOURCES), as Vertex AI picks for the other steps.
_G2_FOR_GPUS = {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}
_N1_FOR_GPUS = {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"}
_CPU_MACHINE = "n1-standard-8"


def default_machine_type(accelerator_type: str, accelerator_count: int) -> str | None:
    """The machine train gets when ``train_machine_type`` is empty: the
    smallest one that carries ``accelerator_count`` GPUs of the type (None:
    no such machine known here)."""
    if accelerator_count == 0:
        return _CPU_MACHINE
    series = GPU_MACHINE_SERIES.get(accelerator_type, ("",))[0]
    if series == "g2-standard":
        return _G2_FOR_GPUS.get(accelerator_count)
    if series == "n1-standard":
        return _N1_FOR_GPUS.get(accelerator_count)
    for series in GPU_MACHINE_SERIES.get(accelerator_type, ()):  # a2-highgpu up to 8 A100s, a2-megagpu 16
        if (machine := f"{series}-{accelerator_count}g") in _GPU_MACHINES:
            return machine
    return None


def machine_gpus(machine_type: str) -> int | None:
    """How many GPUs ``machine_type`` comes with (None: GPUs are attached as asked, as on N1)."""
    if found := re.fullmatch(r"a[234]-\w+-(\d+)g", machine_type):
        return int(found[1])
    if found := re.fullmatch(r"g2-standard-(\d+)", machine_type):
        return _G2_GPUS.get(int(found[1]))
    return None


def problems(*, replica_count: int, machine_type: str, accelerator_type: str, accelerator_count: int) -> list[Problem]:
    """The Vertex AI custom job's settings: their form, and, for a Vertex AI
    GPU type (NVIDIA_...), that the machine type carries it in that number."""
    found = []
    if replica_count < 1:
        found.append(Problem("train_replica_count", replica_count, "1 (one machine) or more"))
    vertex_gpu = accelerator_type.startswith(VERTEX_GPU_PREFIX)
    counts = GPU_COUNTS.get(accelerator_type)
    if vertex_gpu and accelerator_count > 0 and counts and accelerator_count not in counts:
        allowed = f"{', '.join(map(str, counts[:-1]))} or {counts[-1]}" if len(counts) > 1 else str(counts[0])
        return found + [Problem("accelerator_count", accelerator_count,
                                f"{allowed}: how many {accelerator_type} one machine has in Vertex AI custom "
                                "training")]
    if not machine_type:
        if vertex_gpu and accelerator_count > 0 and not default_machine_type(accelerator_type, accelerator_count):
            found.append(Problem("train_machine_type", machine_type, f"no machine known here for {accelerator_count} "
                                                                     f"{accelerator_type}: name one"))
        return found
    if not _MACHINE_TYPE.fullmatch(machine_type):
        return found + [Problem("train_machine_type", machine_type, "a Compute Engine machine type, such as "
                                                                    "g2-standard-8, a2-highgpu-1g or n1-standard-8")]
    if not vertex_gpu:
        return found  # not a Vertex AI pipeline's value (Kubeflow Pipelines', or none on this machine)
    gpus = machine_gpus(machine_type)
    if accelerator_count == 0:
        if machine_type.startswith(_GPU_SERIES):
            found.append(Problem("train_machine_type", machine_type, "comes with GPUs: with accelerator_count 0 "
                                                                     "(no GPU) use a CPU machine such as "
                                                                     "n1-standard-8"))
        return found
    series = GPU_MACHINE_SERIES.get(accelerator_type)
    if series and not machine_type.startswith(tuple(f"{name}-" for name in series)):
        found.append(Problem("train_machine_type", machine_type, f"{accelerator_type} comes on "
                                                                 f"{' or '.join(f'{name}-*' for name in series)} "
                                                                 "machines"))
    elif gpus is not None and gpus != accelerator_count:
        found.append(Problem("accelerator_count", accelerator_count, f"{machine_type} has {gpus} GPU"
                                                                     f"{'s' if gpus > 1 else ''}: ask for that many"))
    return found

