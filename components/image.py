"""The container images the components run in, tagged with the package version.

Two images, built from images/ by ``images/build.sh REGISTRY``: ``kic-cpu`` (CPU
TensorFlow) runs every step but train, ``kic-gpu`` (CUDA TensorFlow) runs train.
They are two repositories rather than two tags of one, so that a reference
pinned by digest (``.../kic-gpu@sha256:...``) still says which image it is.

Override at compile time with ``kic compile --image-cpu REF --image-gpu REF``
(``--image REF`` sets both), or the ``KIC_IMAGE_CPU`` / ``KIC_IMAGE_GPU``
environment variables, read when the components are first imported.
"""

import os

import kic

REGISTRY = "ghcr.io/kic-project"
CPU_IMAGE = os.environ.get("KIC_IMAGE_CPU") or f"{REGISTRY}/kic-cpu:{kic.__version__}"
GPU_IMAGE = os.environ.get("KIC_IMAGE_GPU") or f"{REGISTRY}/kic-gpu:{kic.__version__}"
