"""What can be checked from the user's machine before a pipeline is sent to a
cluster: that every image it names can be pulled, and what the platform
itself says (credentials, the backend's version against what the pipeline
needs, the pipeline root's bucket). ``kic submit`` and ``kic schedule`` stop
on a failed check; ``kic submit --dry-run`` prints every check and sends
nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

OK, FAILED, WARNING, UNCHECKED = "ok", "failed", "warning", "not checked"

BUILD_HINT = ("build and push the images with `images/build.sh REGISTRY` (it recompiles the pipelines to run them, "
              "pinned by digest), or name images that exist with `kic compile --image-cpu REF --image-gpu REF`")
SKIP_HINT = "--no-image-check sends it anyway, for registries this machine cannot reach"


@dataclasses.dataclass(frozen=True)
class Check:
    item: str  # what was checked, e.g. "image ghcr.io/you/kic-cpu:0.1.0"
    status: str  # OK, FAILED, WARNING or UNCHECKED
    detail: str

    def line(self) -> str:
        return f"[{self.status}] {self.item}: {self.detail}"


def image_checks(spec: Mapping[str, Any], *, docker_config: str | None = None, timeout: float = 10.0) -> list[Check]:
    """Whether each image the compiled pipeline runs can be pulled, asked of its registry with the
    user's Docker credentials. An image that cannot be asked about fails too: a pod that cannot pull
    it waits in ImagePullBackOff without a word."""
    from kic.orchestration import image_check

    statuses = image_check.check_images(image_check.images_in_pipeline(spec), docker_config=docker_config,
                                        timeout=timeout)
    return [Check(f"image {status.reference}", OK if status.found else FAILED,
                  status.detail if status.found is not None else f"could not be checked: {status.detail}")
            for status in statuses]


def failures(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if check.status == FAILED]


def failure_message(platform: str, checks: Iterable[Check]) -> str:
    """One message for every failed check, with what to do about the images."""
    failed = failures(checks)
    lines = [f"not sent to {platform}: {len(failed)} check{'s' if len(failed) > 1 else ''} failed"]
    lines += [f"  - {check.item}: {check.detail}" for check in failed]
    if any(check.item.startswith("image ") for check in failed):
        lines += [f"  {BUILD_HINT}", f"  ({SKIP_HINT})"]
    return "\n".join(lines)


def load_spec(pipeline_path: str) -> Mapping[str, Any]:
    """The compiled pipeline, with its platform spec (kfp-kubernetes settings) under "platforms"."""
    import yaml

    with open(pipeline_path, encoding="utf-8") as handle:
        documents = [document for document in yaml.safe_load_all(handle) if isinstance(document, dict)]
    spec = dict(documents[0]) if documents else {}
    for extra in documents[1:]:
        spec.update(extra)
    return spec
