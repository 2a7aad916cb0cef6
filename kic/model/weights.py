"""Pretrained weights of a backbone: ImageNet (Keras' download cache), none,
or a weights file the user names (a local path or gs:// URI).

``problems`` answers, before any step runs, whether the chosen weights can be
had at all: a weights file must exist, and ImageNet weights must be in the
Keras cache or downloadable from where Keras would fetch them. Without it, an
air-gapped cluster finds out inside train, after prepare has run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kic import compat, storage
from kic.errors import Problem, UnreachableError, UserError

if TYPE_CHECKING:
    import keras

    from kic.model.backbone_registry import Backbone

IMAGENET = "imagenet"
NONE = "none"
DEFAULT = IMAGENET
FILE_SUFFIXES = (".weights.h5", ".h5", ".hdf5")
# A stalled connection in an air-gapped cluster should fail, not hang the job.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
# How long the front door waits to learn whether the weights' host answers.
REACHABILITY_TIMEOUT_S = 10.0
_PARTIAL_LOAD_WARNING = re.compile(r"could not be loaded|freshly-initialized|[Ss]kipping")


class BackboneWeightsError(UserError, ValueError):
    """Weights could not be obtained or do not fit the chosen backbone."""


class ImagenetDownloadError(BackboneWeightsError, UnreachableError):
    """Keras could not download the ImageNet weights."""


def choice(weights: str | None) -> str | None:
    """'imagenet', None (random initialisation) or a weights file path/URI;
    raises BackboneWeightsError for anything else."""
    if weights is None or str(weights).strip().lower() in ("", NONE, "random"):
        return None
    text = str(weights).strip()
    if text.lower() == IMAGENET:
        return IMAGENET
    if text.endswith(".keras"):
        raise BackboneWeightsError(
            f"weights {text!r} is a full saved model; pass a weights-only file (.weights.h5) - "
            "to continue from an earlier kic model, use it as the model input instead")
    if not text.endswith(FILE_SUFFIXES):
        raise BackboneWeightsError(
            f"weights must be 'imagenet', 'none' or a Keras weights file "
            f"({', '.join(FILE_SUFFIXES)}) as a local path, gs:// or s3:// URI; got {text!r}")
    return text


def problems(weights: str, backbone: Backbone, image_size: int, *, reachability: bool = True) -> list[Problem]:
    """Whether ``weights`` can be had for ``backbone`` at ``image_size``
    (0: native). With ``reachability`` off, only the form is checked."""
    try:
        chosen = choice(weights)
    except BackboneWeightsError as error:
        return [Problem("pretrained_weights", weights, str(error))]
    if chosen is None or not reachability:
        return []
    if chosen != IMAGENET:
        try:
            found = storage.exists(chosen)
        except storage.StorageError as error:
            return [Problem("pretrained_weights", weights, f"cannot be read: {error}")]
        return [] if found else [Problem("pretrained_weights", weights, "no such weights file")]
    try:
        source = imagenet_source(backbone, image_size or backbone.input_size)
    except ValueError as error:  # Keras checks its arguments first (input size against the ImageNet variants)
        return [Problem("pretrained_weights", weights, f"{backbone.name} cannot be built with ImageNet weights at "
                                                       f"{image_size or backbone.input_size} px: {error}")]
    if os.path.exists(source.cache_path):
        return []
    reason = _unreachable_reason(source.origin)
    if reason is None:
        return []
    return [Problem("pretrained_weights", weights,
                    f"the ImageNet weights of {backbone.name} are not in the Keras cache ({source.cache_path}) "
                    f"and cannot be downloaded from {source.origin} ({reason}); pre-fill the cache with that "
                    "file, pass a weights file (.weights.h5) as a path, gs:// or s3:// URI, or use 'none'")]


# --------------------------------------------------------------------------- ImageNet


@dataclasses.dataclass(frozen=True)
class ImagenetSource:
    origin: str  # where Keras downloads the file from
    cache_path: str  # where Keras keeps it, and looks first
    file_hash: str | None = None  # what Keras checks the download against (None: some families give none)


def imagenet_source(backbone: Backbone, image_size: int) -> ImagenetSource:
    """Where Keras would get this backbone's ImageNet weights, asked of Keras
    itself (kic.compat.imagenet_weights_request: the application is built
    with its download intercepted), so the answer holds for every variant
    (the file can depend on width and input size). Builds the network once,
    without weights, and downloads nothing."""
    import keras

    constructor = getattr(keras.applications, backbone.constructor)
    asked = compat.imagenet_weights_request(constructor, include_top=False, input_shape=(image_size, image_size, 3),
                                            pooling="avg", **dict(backbone.options))
    if asked is None:
        raise RuntimeError(f"Keras built {backbone.constructor} without asking for its ImageNet weights file")
    file_name = asked.fname or os.path.basename(asked.origin)
    return ImagenetSource(origin=asked.origin, cache_path=os.path.join(keras_cache_dir(asked.cache_subdir), file_name),
                          file_hash=asked.file_hash)


def keras_cache_dir(subdir: str = "models") -> str:
    """Where Keras looks for (and downloads) ImageNet weights."""
    base = os.path.expanduser(compat.keras_home())
    if not os.access(base, os.W_OK):  # keras.utils.get_file falls back the same way
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(base, subdir)


def _unreachable_reason(url: str) -> str | None:
    """None when ``url`` answers a HEAD request; else why not."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=REACHABILITY_TIMEOUT_S):  # noqa: S310 - Keras' own URL
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


@contextlib.contextmanager
def download_timeout() -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def is_download_failure(error: BaseException) -> bool:
    if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout)):
        return True
    text = str(error)
    return text.startswith("URL fetch failure") or "file hash does not match" in text


def download_error(backbone: Backbone, error: BaseException) -> ImagenetDownloadError:
    url = re.search(r"https?://[^\s:]+(?::\d+)?[^\s:]*", str(error))
    source = f"{os.path.basename(url.group(0))} (from {url.group(0)})" if url else "the weights file"
    return ImagenetDownloadError(
        f"could not download ImageNet weights for {backbone.name}: {error}. Pre-fill the Keras cache "
        f"at {keras_cache_dir()} with {source}, or pass a weights file (.weights.h5 / .h5) or weights='none'")


# --------------------------------------------------------------------------- weights files


@contextlib.contextmanager
def _local_file(uri: str) -> Iterator[str]:
    """A local path for ``uri``; ``local_copy`` keeps the base name, whose suffix Keras dispatches on."""
    try:
        with storage.local_copy(uri) as path:
            if not os.path.isfile(path):
                raise BackboneWeightsError(f"weights file {uri} is not a file")
            yield path
    except storage.StorageNotFoundError:
        raise BackboneWeightsError(f"weights file {uri} does not exist") from None


def load_file(backbone: Backbone, model: keras.Model, uri: str) -> None:
    """Loads a weights file into ``model``; a file that fits only in part is refused."""
    with _local_file(uri) as path, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            error_text = ""
        except (ValueError, OSError, KeyError, TypeError, IndexError) as error:  # all: "wrong file"
            error_text = str(error)
    # Keras only warns when parts of the file have no matching layers; a half-loaded backbone
    # would train on silently, so that counts as a mismatch too.
    skipped = [str(w.message) for w in caught if _PARTIAL_LOAD_WARNING.search(str(w.message))]
    if error_text or skipped:
        detail = re.sub(r"\s*Target variable:.*", "", error_text or skipped[0], flags=re.DOTALL)
        detail = " ".join(detail.split())[:500]
        raise BackboneWeightsError(
            f"weights file {uri} does not fit backbone {backbone.name} ({backbone.constructor}"
            f"{', ' + str(dict(backbone.options)) if backbone.options else ''}): {detail}")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
