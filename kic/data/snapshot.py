"""What the sources of a run are now, as fingerprints that change when their
content does, and only then.

On Kubeflow Pipelines and Vertex AI a step whose inputs have not changed is
taken from the cache. prepare's inputs are parameters (a gs:// prefix, say), so
without a fingerprint a scheduled retrain would reuse last week's prepared data
however many images arrived since. The snapshot step (never cached) computes
these fingerprints and passes them to prepare, train, evaluate and (in the
tuning pipeline) plan_trials and the trials: unchanged data keeps the cache,
changed data re-prepares and retrains.

* a folder, gs:// or s3:// prefix: every file's name, size and version (its GCS
  generation; its S3 ETag, modification time and version id; or its local
  modification time), from one listing; nothing read;
* a manifest: its content, and the size and version of every file it names
  (an image replaced under the same name is a change too), from one listing
  of each folder that holds named files, not a request per file;
* ``tfds:NAME[:CONFIG]``: the name, config, version and prepared files;
* a model (folder or model.tar.gz) or a weights file: its files' names, sizes
  and versions.

``content_fingerprint`` is for a small document read whole anyway (a search
space): its bytes, so a copy re-uploaded unchanged keeps the cache.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

from kic import storage
from kic.data import manifest
from kic.data.sources import TFDS_PREFIX
from kic.errors import SourceError


def fingerprint(*uris: str, tfds_data_dir: str = "") -> str:
    """One fingerprint for all of ``uris`` ("" where none is given)."""
    digest = hashlib.sha256()
    for uri in uris:
        digest.update(f"{uri}\0{_describe(uri, tfds_data_dir)}\0".encode())
    return digest.hexdigest()[:32]


def content_fingerprint(uri: str) -> str:
    """A fingerprint of the bytes of the file ``uri``."""
    try:
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:32]
    except storage.StorageError as error:
        raise SourceError(f"cannot take a snapshot of {uri}: {error}") from None


def _describe(uri: str, tfds_data_dir: str) -> str:
    if not uri:
        return ""
    if uri.startswith(TFDS_PREFIX):
        return _describe_tfds(uri, tfds_data_dir)
    try:
        if manifest.is_manifest(uri):
            return _describe_manifest(uri)
        stats = storage.list_stats(uri)
    except storage.StorageError as error:
        raise SourceError(f"cannot take a snapshot of {uri}: {error}") from None
    if not stats:
        raise SourceError(f"cannot take a snapshot of {uri}: no files there")
    return "\n".join(f"{stat.name}\t{stat.size}\t{stat.version}" for stat in stats)


def _describe_manifest(uri: str) -> str:
    named = sorted({row.location for row in manifest.read_manifest(uri, labels=False)})
    folders = sorted({_folder(location) for location in named})
    # A manifest of a million images names them in a few folders: a listing of
    # each (its own files only: a folder's subfolders may hold anything) costs a
    # request per thousand files, where asking after each file costs one per file.
    with ThreadPoolExecutor(max_workers=storage.DEFAULT_WORKERS) as pool:
        listings = dict(zip(folders, pool.map(_files_in, folders), strict=True))
    lines = [hashlib.sha256(storage.read_bytes(uri)).hexdigest()]
    for location in named:
        # A named file that is missing is rejected by prepare, not an error here; its arrival is a change.
        stat = listings[_folder(location)].get(_base_name(location))
        lines.append(f"{location}\t{stat.size}\t{stat.version}" if stat else f"{location}\tmissing")
    return "\n".join(lines)


def _folder(location: str) -> str:
    """The folder holding ``location``, ending in a separator (which spares list_stats a request on GCS)."""
    if storage.is_remote(location):
        return posixpath.dirname(location) + "/"
    return os.path.join(os.path.dirname(location), "")


def _base_name(location: str) -> str:
    return posixpath.basename(location) if storage.is_remote(location) else os.path.basename(location)


def _files_in(folder: str) -> dict[str, storage.FileStat]:
    try:
        return {stat.name: stat for stat in storage.list_stats(folder, recursive=False)}
    except storage.StorageNotFoundError:
        return {}


def _describe_tfds(uri: str, tfds_data_dir: str) -> str:
    import tensorflow_datasets as tfds

    name, _, config = uri[len(TFDS_PREFIX):].partition(":")
    try:
        builder = tfds.builder(name, config=config or None, data_dir=tfds_data_dir or None)
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds; prepare reports them in full
        raise SourceError(f"cannot take a snapshot of {uri}: {str(error).splitlines()[0]}") from None
    files = _describe(builder.data_dir, "") if storage.exists(builder.data_dir) else "not prepared"
    return f"{builder.info.full_name}\t{builder.version}\n{files}"
