"""The rule by which the Kubeflow Pipelines backend's driver gives a task's pod
its GPUs, transcribed from its Go source, so that tests hold our compiled IR to
the rule the platform applies rather than to our own idea of it.

``initPodSpecPatch`` in backend/src/v2/driver/driver.go (kubeflow/pipelines):

* releases 2.0.0 to 2.3.0 read only the deprecated ``type`` and ``count``
  fields and set a limit when ``type != "" && count > 0``; the newer fields
  are dropped on decoding (the pinned IR has none);
* from 2.4.0 (#11501; the same code through 2.17 and master) a non-empty
  ``resourceType``/``resourceCount`` wins over ``type``/``count``, each on its
  own; a ``{{$.inputs.parameters['...']}}`` placeholder there is resolved by
  ``resolvePodSpecInputRuntimeParameter``, which returns the run value's
  ``GetStringValue()``: "" for a number, so the limit is not set; a limit is
  set when the resolved type and count are both non-empty.

The limit's resource name is the type as it is (``nvidia.com/gpu``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)'\]\}\}")


def gpu_limits(accelerator: Mapping[str, Any], run_values: Mapping[str, Any], release: tuple[int, int, int]
               ) -> dict[str, str]:
    """The pod's accelerator limits for the IR's ``resources.accelerator`` on backend ``release``, the
    task's input parameters holding ``run_values`` (as JSON values: a number stays a number)."""
    if release < (2, 4, 0):
        kind, count = accelerator.get("type", ""), int(accelerator.get("count", 0) or 0)
        return {kind: str(count)} if kind and count > 0 else {}
    kind = _resolve(accelerator["resourceType"], run_values) if accelerator.get("resourceType") else \
        accelerator.get("type", "")
    if accelerator.get("resourceCount"):
        count = _resolve(accelerator["resourceCount"], run_values)
    else:
        count = str(accelerator["count"]) if int(accelerator.get("count", 0) or 0) > 0 else ""
    return {kind: count} if kind and count else {}


def _resolve(value: str, run_values: Mapping[str, Any]) -> str:
    found = _PLACEHOLDER.fullmatch(value)
    if not found:
        return value
    resolved = run_values[found[1]]
    return resolved if isinstance(resolved, str) else ""  # structpb's GetStringValue() of a number is ""
