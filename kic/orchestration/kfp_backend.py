"""What a compiled pipeline needs of a Kubeflow Pipelines backend, and which
release a backend says it is.

Each feature's first release, as the backend's own code has it (the driver,
the Argo compiler and the API server of kubeflow/pipelines, at the release
tags; there are no releases between 2.5.0 and 2.14.0):

* literal accelerator fields: 2.0 reads ``type``/``count``, 2.4 and later
  ``resourceType``/``resourceCount`` (KFP's compiler writes both for a literal);
  a placeholder there is resolved from 2.4 on (#11501), by the run value's
  string form only;
* kfp-kubernetes: node selectors 2.0; timeouts (activeDeadlineSeconds) and
  tolerations 2.1 (#10481, #10471); secrets as volumes as kfp-kubernetes 2.17
  writes them (with ``optional`` and ``secretNameParameter``) 2.4.1, the first
  driver that skips fields it does not know (#11662): up to 2.4.0 it fails the
  task on them; a secret's ``optional`` is read from 2.15.0 (#12216): before, a
  secret missing from the namespace leaves the pod waiting in
  CreateContainerConfigError until the step's timeout;
* retry policies 2.4.1 (#11673; ignored before);
* ``{{$.pipeline_job_uuid}}`` 2.5.0 (#11599; passed on as that text before);
* ``dsl.Collected`` (a loop's outputs gathered) 2.14.0 (#11725; the run is
  refused at creation before).

The API server's ``/apis/v2beta1/healthz`` answers ``tag_name`` (through the
UI's proxy ``apiServerTagName``): the release on 2.0-2.3 and from 2.16 on,
"unknown" on 2.4-2.15, whose images were built without it (#12795).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

Version = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str  # in a user's words
    since: Version
    on_older: str  # what an older backend does with it
    fails_on_older: bool  # the task or the run fails there (else the feature is lost, and the run goes on)


TIMEOUT = Feature("step timeouts (prepare 6 h, train 72 h)", (2, 1, 0),
                  "the driver does not know the field and fails the step (kic compile --target kfp "
                  "--no-step-timeouts leaves them out)", True)
TOLERATION = Feature("GPU node tolerations (--gpu-toleration)", (2, 1, 0),
                     "the driver does not know the field and fails the step", True)
SECRET_VOLUME = Feature("a secret mounted into the steps (--gcs-credentials-secret, --s3-credentials-secret)",
                        (2, 4, 1),
                        "the driver does not know fields kfp-kubernetes writes for it and fails the step", True)
OPTIONAL_SECRET = Feature("a missing --s3-credentials-secret tolerated", (2, 15, 0),
                          "the pod waits in CreateContainerConfigError while the secret is missing from the "
                          "namespace (until the step's timeout)", False)
RESOURCE_PLACEHOLDER = Feature("GPUs named by run parameters", (2, 4, 0),
                               "the placeholder is dropped: the pod gets no GPU", True)
RETRY = Feature("retries of prepare and train", (2, 4, 1), "ignored: a failed step is not retried", False)
JOB_ID = Feature("the run's id as export's version folder", (2, 5, 0),
                 "not filled in: export names the version by time instead", False)
COLLECTED = Feature("gathering the trials' results (dsl.Collected)", (2, 14, 0),
                    "the backend refuses to create the run", True)

JOB_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"


def parse_version(text: str) -> Version | None:
    """``2.5.0``, ``v2.3.0`` or ``2.14.0-rc.1`` as (2, 5, 0); None for anything else ("unknown", "master")."""
    found = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.].*)?", text.strip())
    return (int(found[1]), int(found[2]), int(found[3] or 0)) if found else None


def reported_version(healthz: Mapping[str, Any]) -> Version | None:
    """The release a healthz answer names (the API server's own or its UI proxy's), if it names one."""
    for key in ("tag_name", "apiServerTagName"):
        if isinstance(healthz.get(key), str) and (version := parse_version(healthz[key])):
            return version
    return None


def format_version(version: Version) -> str:
    return ".".join(map(str, version))


def needs(spec: Mapping[str, Any]) -> list[Feature]:
    """The features of ``spec`` (a compiled pipeline, its platform spec under "platforms") that not every
    2.x backend has, newest first."""
    found = set()
    kubernetes = spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    for config in kubernetes.values():
        if config.get("activeDeadlineSeconds"):
            found.add(TIMEOUT)
        if config.get("tolerations"):
            found.add(TOLERATION)
        if config.get("secretAsVolume") or config.get("secretAsEnv"):
            found.add(SECRET_VOLUME)
        if any(secret.get("optional") for secret in config.get("secretAsEnv", [])):
            found.add(OPTIONAL_SECRET)
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        accelerator = executor.get("container", {}).get("resources", {}).get("accelerator", {})
        if any("{{$" in str(accelerator.get(field, "")) for field in ("resourceType", "resourceCount")):
            found.add(RESOURCE_PLACEHOLDER)
    for task in _tasks(spec):
        if task.get("retryPolicy"):
            found.add(RETRY)
        if any(argument.get("runtimeValue", {}).get("constant") == JOB_ID_PLACEHOLDER
               for argument in task.get("inputs", {}).get("parameters", {}).values()):
            found.add(JOB_ID)
        loops_over = task.get("parameterIterator") or task.get("artifactIterator")
        component = spec.get("components", {}).get(task.get("componentRef", {}).get("name", ""), {})
        if loops_over and component.get("dag", {}).get("outputs"):
            found.add(COLLECTED)
    return sorted(found, key=lambda feature: feature.since, reverse=True)


def minimum_version(spec: Mapping[str, Any]) -> Version:
    """The oldest backend that runs ``spec`` without failing (some features may be lost before
    ``full_version``)."""
    return max((feature.since for feature in needs(spec) if feature.fails_on_older), default=(2, 0, 0))


def full_version(spec: Mapping[str, Any]) -> Version:
    """The oldest backend that has every feature ``spec`` uses."""
    return max((feature.since for feature in needs(spec)), default=(2, 0, 0))


def shortfalls(spec: Mapping[str, Any], version: Version) -> tuple[list[str], list[str]]:
    """What backend ``version`` lacks for ``spec``: (what fails there, what is lost there), in words."""
    failing, lost = [], []
    for feature in needs(spec):
        if version < feature.since:
            line = f"{feature.name} (from {format_version(feature.since)}): on {format_version(version)} " \
                   f"{feature.on_older}"
            (failing if feature.fails_on_older else lost).append(line)
    return failing, lost


def _tasks(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for component in (spec.get("root", {}), *spec.get("components", {}).values()):
        yield from component.get("dag", {}).get("tasks", {}).values()
