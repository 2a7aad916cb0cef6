# syntax=docker/dockerfile:1
# kic-gpu: train, on CUDA TensorFlow (tensorflow[and-cuda]: the CUDA libraries come from PyPI; the
# driver comes from the node). From the repository root:
#   docker build -f images/gpu.Dockerfile -t REGISTRY/kic-gpu:VERSION .     (images/build.sh does this)

# The build stage makes the wheel; the runtime stage installs it and nothing else of the sources.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY kic kic
COPY components components
COPY pipelines pipelines
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# HOME explicitly: a cluster may run the image under another user id, which has no passwd entry.
# GKE mounts the NVIDIA driver's libraries (libcuda) and tools under /usr/local/nvidia; the NVIDIA
# container toolkit (other clusters) reads NVIDIA_*. TensorFlow keeps its info lines: they say which GPUs it uses.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/home/kic \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib PATH=/usr/local/nvidia/bin:${PATH} \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The kic wheel and TensorFlow's CUDA libraries, every package at the version images/constraints-gpu.txt pins.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=images/constraints-gpu.txt,target=/tmp/constraints.txt \
    pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/kic-*.whl "tensorflow[and-cuda]"

# A non-root user; group 0 owns its home too, so an arbitrary user id in group 0 (OpenShift) can write there.
RUN useradd --create-home --uid 1000 --gid 0 kic && mkdir /home/kic/.keras && chown kic:0 /home/kic/.keras
USER 1000
# Not the sources: the steps import the installed package.
WORKDIR /home/kic

# Backbones whose ImageNet weights to put in the Keras cache, for clusters without internet access,
# e.g. --build-arg PREFETCH_BACKBONES="mobilenet_v2_100_224 efficientnet_b0" (`kic backbones` lists them).
ARG PREFETCH_BACKBONES=""
RUN if [ -n "${PREFETCH_BACKBONES}" ]; then python -m kic.model.prefetch_weights ${PREFETCH_BACKBONES}; fi \
 && chmod -R g=u /home/kic
