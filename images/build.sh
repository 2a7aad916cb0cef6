#!/usr/bin/env bash
# Builds the CPU and GPU images, pushes them to REGISTRY and recompiles pipeline.yaml,
# pipeline-vertex.yaml, the tuning pipelines and components/*/component.yaml to run them, pinned by digest. Needs
# Docker with buildx, logged in to REGISTRY, and the project's virtualenv active, with the vertex extra (for
# `kic compile`, which writes both targets). From anywhere:
#   images/build.sh REGISTRY          e.g. images/build.sh us-docker.pkg.dev/my-project/kic
#   PREFETCH_BACKBONES="mobilenet_v2_100_224 efficientnet_b0" images/build.sh REGISTRY
#     ... with those backbones' ImageNet weights in the images (clusters without internet access)
# Its last two lines are KIC_IMAGE_CPU=REF and KIC_IMAGE_GPU=REF: the variables kic reads, so a workflow can
# append them to $GITHUB_OUTPUT and a shell can export them.
set -euo pipefail
usage="usage: images/build.sh REGISTRY (for example ghcr.io/you or us-docker.pkg.dev/PROJECT/REPO)"
registry=${1:?$usage}
registry=${registry%/}

refuse() { echo "images/build.sh: $registry: $1; $usage" >&2; exit 2; }
# Refused here rather than by docker after a build of several minutes; the script adds the repository
# names and the tag itself.
case $registry in
  *://*) refuse "no scheme: a registry path, not a URL" ;;
  *@*) refuse "no digest: the script pins the images by the digests it pushes" ;;
  */*:*) refuse "no tag: the script tags the images with kic's version" ;;
esac
# Docker's reference grammar: a host (a port allowed), then lower-case path components (GHCR's owner included).
host='[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]+)?'
component='[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*'
[[ $registry =~ ^$host(/$component)*$ ]] ||
  refuse "not a registry path: a host, then lower-case path components"

cd "$(dirname "$0")/.."
command -v kic >/dev/null || { echo "images/build.sh: no kic command: activate the project's virtualenv" >&2; exit 1; }
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' kic/__init__.py)
[[ -n $version ]] || { echo "images/build.sh: no __version__ in kic/__init__.py" >&2; exit 1; }
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
# Without --target and --output, kic compile writes every committed YAML: both targets' training and tuning
# pipelines and every component.
kic compile --image-cpu "$cpu" --image-gpu "$gpu"
echo "pipeline.yaml, pipeline-vertex.yaml, tuning-pipeline.yaml, tuning-pipeline-vertex.yaml and" \
  "components/*/component.yaml now run:"
echo "KIC_IMAGE_CPU=$cpu"
echo "KIC_IMAGE_GPU=$gpu"
