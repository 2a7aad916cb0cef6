"""Which model a new one is judged against: ``baseline_model_uri``, resolved.

* a model's URI (folder or model.tar.gz, local or gs://): that model;
* ``none``: no comparison, only the absolute bar;
* empty (the default): the model ``export_uri/LATEST`` names, the one a server
  reading LATEST serves now, as TFX's LatestBlessedModelStrategy judges each
  new model against the latest blessed one; no comparison on the first run,
  when there is no LATEST (or no export_uri).

The snapshot step resolves it once, at the start of the run, and hands the
URI to evaluate with a fingerprint of that model: a LATEST that moved between
two runs changes evaluate's cache key. Needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath

from kic import artifacts, storage
from kic.errors import Problem, SourceError
from kic.model import model_info

NONE = "none"
GIVEN, LATEST = "given", "latest"


@dataclasses.dataclass(frozen=True)
class Baseline:
    uri: str  # "": nothing to compare with
    origin: str = ""  # GIVEN (baseline_model_uri) or LATEST (export_uri/LATEST)

    def describe(self) -> str:
        if not self.uri:
            return "no baseline"
        return f"{self.uri} (what LATEST names)" if self.origin == LATEST else self.uri


def is_off(baseline_model_uri: str) -> bool:
    return baseline_model_uri.strip().lower() == NONE


def resolve(baseline_model_uri: str, export_uri: str) -> Baseline:
    """The baseline of a run (see the module docstring); raises SourceError
    when LATEST names something that is not a kic model."""
    if is_off(baseline_model_uri):
        return Baseline("")
    if baseline_model_uri:
        return Baseline(baseline_model_uri, GIVEN)
    latest = latest_version(export_uri)
    if latest is None:
        return Baseline("")
    if not _is_model(latest):
        raise SourceError(f"{storage.join(export_uri, artifacts.LATEST_POINTER)} names {latest}, which is not a "
                          f"kic model (no {artifacts.MODEL_INFO}); point LATEST at an exported version, or set "
                          f"baseline_model_uri to a model (or to {NONE})")
    return Baseline(latest, LATEST)


def latest_version(export_uri: str) -> str | None:
    """The version ``export_uri/LATEST`` names (kic.serving.export.publish_version
    writes it), or None without export_uri or LATEST."""
    if not export_uri:
        return None
    pointer = storage.join(export_uri, artifacts.LATEST_POINTER)
    try:
        if not storage.exists(pointer):
            return None
        named = storage.read_text(pointer).strip()
    except storage.StorageError as error:
        raise SourceError(f"cannot read {pointer}: {error}") from None
    if not named:
        return None
    if "://" not in named and not os.path.isabs(named):
        # A relative export_uri was written as is; the version is always a folder of export_uri.
        named = storage.join(export_uri, posixpath.basename(named.rstrip("/")))
    return named


def problems(baseline_model_uri: str, export_uri: str, *, look_up: bool) -> list[Problem]:
    """baseline_model_uri's check in the front door (kic.parameters): a given
    model must be one; with the default, what LATEST names must be one."""
    if is_off(baseline_model_uri) or not look_up:
        return []
    try:
        if baseline_model_uri:
            if not _is_model(baseline_model_uri):
                return [Problem("baseline_model_uri", baseline_model_uri,
                                "not a kic model: expected a train output or export folder "
                                f"(with {artifacts.MODEL_INFO}) or a {artifacts.MODEL_TARBALL}, or {NONE}")]
            return []
        resolve("", export_uri)
    except storage.StorageError as error:
        return [Problem("baseline_model_uri", baseline_model_uri, f"cannot be read: {error}")]
    except SourceError as error:
        return [Problem("export_uri", export_uri, f"the default baseline_model_uri compares with its LATEST: "
                                                  f"{error}")]
    return []


def _is_model(uri: str) -> bool:
    marker = uri if uri.endswith(model_info.TARBALL_SUFFIXES) else storage.join(uri, artifacts.MODEL_INFO)
    return storage.exists(marker)
