#!/usr/bin/env bash
# Builds the CPU and GPU images, pushes them to REGISTRY and recompiles pipeline.yaml,
# pipeline-vertex.yaml, the tuning pipelines and components/*/component.yaml to run them, pinned by digest. Needs
# Docker with buildx, logged in to REGISTRY, and the project's virtualenv active (for
# `kic compile`). From anywhere:
#   images/build.sh REGISTRY          e.g. images/build.sh us-docker.pkg.dev/my-project/kic
#   PREFETCH_BACKBONES="mobilenet_v2_100_224 efficientnet_b0" images/build.sh REGISTRY
#     ... with those backbones' ImageNet weights in the images (clusters without internet access)
set -euo pipefail
registry=${1:?usage: images/build.sh REGISTRY (for example ghcr.io/you or us-docker.pkg.dev/PROJECT/REPO)}
registry=${registry%/}
cd "$(dirname "$0")/.."
command -v kic >/dev/null || { echo "images/build.sh: no kic command: activate the project's virtualenv" >&2; exit 1; }
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' kic/__init__.py)
metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT

push() {  # builds and pushes kic-$1; sets $pushed to its reference, pinned by the digest the registry stored
  local repository="$registry/kic-$1"
  docker buildx build --platform linux/amd64 --file "images/$1.Dockerfile" --tag "$repository:$version" \
    --build-arg "PREFETCH_BACKBONES=${PREFETCH_BACKBONES:-}" --push --metadata-file "$metadata" .
  pushed="$repository@$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' \
    "$metadata")"
}

push cpu
cpu=$pushed
push gpu
gpu=$pushed
kic compile --image-cpu "$cpu" --image-gpu "$gpu"
echo "pipeline.yaml, pipeline-vertex.yaml and components/*/component.yaml now run $cpu and $gpu"
