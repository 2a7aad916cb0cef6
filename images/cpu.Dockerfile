# syntax=docker/dockerfile:1
# kic-cpu: validate, prepare, evaluate, export and batch_predict, on CPU TensorFlow
# (no CUDA libraries: a fraction of the GPU image's size). From the repository root:
#   docker build -f images/cpu.Dockerfile -t REGISTRY/kic-cpu:VERSION .     (images/build.sh does this)

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
# TF_CPP_MIN_LOG_LEVEL=1 hides TensorFlow's info lines (no GPU here, by design), not its warnings.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/home/kic TF_CPP_MIN_LOG_LEVEL=1

# The kic wheel, and every package under it at the version images/constraints-cpu.txt pins.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=images/constraints-cpu.txt,target=/tmp/constraints.txt \
    pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/kic-*.whl

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
