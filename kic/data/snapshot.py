"""What the sources of a run are now, as fingerprints that change when their
content does, and only then.

On Kubeflow Pipelines and Vertex AI a step whose inputs have not changed is
taken from the cache. prepare's inputs are parameters (a gs:// prefix, say), so
without a fingerprint a scheduled retrain would reuse last week's prepared data
however many images arrived since. The snapshot step (never cached) computes
these fingerprints and passes them to prepare, train and evaluate: unchanged
data keeps the cache, changed data re-prepares and retrains.

* a folder or gs:// prefix: every file's name, size and version (its GCS
  generation, or its local modification time), from one listing; nothing read;
* a manifest: its content (the images it names are not listed: the manifest is
  the dataset's definition);
* ``tfds:NAME[:CONFIG]``: the name, config, version and prepared files;
* a model (folder or model.tar.gz): its files' names, sizes and versions.
"""

from __future__ import annotations

import hashlib

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


def _describe(uri: str, tfds_data_dir: str) -> str:
    if not uri:
        return ""
    if uri.startswith(TFDS_PREFIX):
        return _describe_tfds(uri, tfds_data_dir)
    try:
        if manifest.is_manifest(uri):
            return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
        stats = storage.list_stats(uri)
    except storage.StorageError as error:
        raise SourceError(f"cannot take a snapshot of {uri}: {error}") from None
    if not stats:
        raise SourceError(f"cannot take a snapshot of {uri}: no files there")
    return "\n".join(f"{stat.name}\t{stat.size}\t{stat.version}" for stat in stats)


def _describe_tfds(uri: str, tfds_data_dir: str) -> str:
    import tensorflow_datasets as tfds

    name, _, config = uri[len(TFDS_PREFIX):].partition(":")
    try:
        builder = tfds.builder(name, config=config or None, data_dir=tfds_data_dir or None)
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds; prepare reports them in full
        raise SourceError(f"cannot take a snapshot of {uri}: {str(error).splitlines()[0]}") from None
    files = _describe(builder.data_dir, "") if storage.exists(builder.data_dir) else "not prepared"
    return f"{builder.info.full_name}\t{builder.version}\n{files}"
