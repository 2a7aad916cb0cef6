"""One file API over local paths, ``gs://``, ``s3://`` and ``minio://`` URIs.

Everything in kic that touches user data or artifacts goes through here, so
GCS and S3 support, retries and commit-last writes live in one module.

Semantics worth knowing:

* A "directory" on GCS is a name prefix: ``list_files("gs://b/data")`` lists every
  object under ``data/`` (never ``data2/``); placeholder objects ending in ``/``
  (made by the console or gcsfuse) are skipped. Names are used verbatim: no
  globbing anywhere, so ``cls[1]/a.jpg`` or names with spaces work.
* Writes are commit-last: a local file is written to a temporary sibling and
  renamed; a GCS object only becomes visible once its upload completed.
* Transient GCS failures (408, 429, 5xx, connection errors) are retried with the
  google-cloud-storage ``DEFAULT_RETRY`` policy (exponential backoff from 1 s, up to
  120 s per call) on reads, listings, uploads, copies and deletes; after that a
  StorageError says GCS kept failing. Uploads are not conditional (the library only
  retries those by default since 3.x, and we pass the policy explicitly), so a
  retried upload simply rewrites the same bytes; kic never has two writers per object.
* Failures a user can cause (missing bucket/object/file, no permission, no
  credentials) raise :class:`StorageError` naming the URI: an ``OSError`` and a
  ``kic.errors.UserError``, so commands and steps show its message alone.
  ``StorageNotFoundError`` is also a ``FileNotFoundError`` and
  ``StoragePermissionError`` also a ``PermissionError``.
* GCS credentials come from Application Default Credentials. When
  ``STORAGE_EMULATOR_HOST`` is set, anonymous credentials and a fixed project are
  used instead (tests, local emulators).
* ``s3://`` (Amazon S3, MinIO and other S3-compatible stores) goes through boto3
  with its standard credential chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``AWS_PROFILE``, web identity, instance roles) and endpoint settings
  (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, which boto3 reads itself).
  A "directory" is a key prefix, as on GCS; placeholder keys ending in ``/`` are
  skipped. A PUT is atomic, so writes are commit-last there too; files larger
  than ``S3_MULTIPART_BYTES`` go up in parallel parts. Throttling (503 SlowDown),
  5xx and connection errors are retried by botocore's "standard" mode
  (``S3_MAX_ATTEMPTS`` tries, exponential backoff with jitter). Copies between
  GCS and S3 go through a local temporary file.
* ``minio://`` is Kubeflow Pipelines' name for its own artifact store (MinIO,
  SeaweedFS): the S3 API with a store of its own when ``use_for_minio`` names
  one (train finds the cluster's, kic.runtime.kfp_artifact_store), else the
  ``s3://`` settings. A copy between ``minio://`` and ``s3://`` goes through a
  local temporary file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from kic.errors import NotFoundError, UnreachableError, UserError

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

GCS_SCHEME = "gs://"
S3_SCHEME = "s3://"
MINIO_SCHEME = "minio://"  # Kubeflow Pipelines' URIs of its default MinIO artifact store
REMOTE_SCHEMES = (GCS_SCHEME, S3_SCHEME, MINIO_SCHEME)
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# 8 MiB (boto3's default) would split a checkpoint into dozens of parts; above this, parts of this size.
S3_MULTIPART_BYTES = 64 * 1024 * 1024
S3_MAX_ATTEMPTS = 10  # tries of one request, the first included: about a minute of 503 SlowDown is ridden out
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "kic-emulator"
DEFAULT_WORKERS = 16

_T = TypeVar("_T")


class StorageError(UserError, OSError):
    """A storage operation failed for a reason worth showing to the user as is.

    ``uri`` is the path or URI concerned; GCS and S3 failures keep the original
    client exception in ``gcs_error`` or ``s3_error`` (not chained, so tracebacks
    stay short).
    """

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.gcs_error: BaseException | None = None
        self.s3_error: BaseException | None = None


class StorageNotFoundError(StorageError, NotFoundError):
    """The file, object, directory or bucket does not exist."""


class StoragePermissionError(StorageError, UnreachableError, PermissionError):
    """The credentials in use may not perform the operation."""


class ObjectTooLarge(StorageError):
    """A file or object over the byte limit its reader set, not read past it;
    ``size`` is its size where the store said it before the bytes came."""

    def __init__(self, uri: str, limit: int, size: int | None = None) -> None:
        told = f"is {size:,} bytes, over" if size is not None else "holds more than"
        super().__init__(f"the file {told} the limit of {limit:,} bytes", uri)
        self.limit, self.size = limit, size


def _error(kind: type[StorageError], message: str, uri: str) -> StorageError:
    return kind(message, uri)


# --------------------------------------------------------------------------- paths


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def is_s3(uri: str) -> bool:
    """An object on the S3 API: ``s3://``, or Kubeflow Pipelines' ``minio://``."""
    return uri.startswith((S3_SCHEME, MINIO_SCHEME))


def is_remote(uri: str) -> bool:
    """An object-store URI (gs://, s3:// or minio://), whose "directories" are name prefixes."""
    return uri.startswith(REMOTE_SCHEMES)


def scheme(uri: str) -> str:
    """``gs://``, ``s3://`` or ``minio://`` for an object-store URI; "" for a local path."""
    return next((prefix for prefix in REMOTE_SCHEMES if uri.startswith(prefix)), "")


def s3_endpoint() -> str:
    """The S3 endpoint set in the environment ("" for AWS's own)."""
    return next((os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), "")


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: a gs:// URI needs a bucket name, as in gs://bucket/path", uri)
    return bucket, name


def _gcs_dir_prefix(name: str) -> str:
    """Object-name prefix of the "directory" ``name`` ("" is the bucket root)."""
    name = name.rstrip("/")
    return f"{name}/" if name else ""


# --------------------------------------------------------------------------- client

_client_lock = threading.Lock()
_clients: dict[tuple, object] = {}


def _shared_client(settings: tuple, make: Callable[[], _T]) -> _T:
    """The client ``make`` makes, made once per process and ``settings`` and
    shared by all threads. Keyed on the pid too: a forked child must not reuse
    its parent's connections."""
    key = (os.getpid(), *settings)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = make()
        return client


def _client() -> Client:
    """The GCS client, per ``STORAGE_EMULATOR_HOST`` (tests switch between an
    emulator and a proxy in front of it)."""
    emulator = os.environ.get(EMULATOR_ENV) or None
    return _shared_client(("gcs", emulator), lambda: _new_client(emulator))


def _new_client(emulator: str | None) -> Client:
    import requests.adapters
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage as gcs

    from kic import compat

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        client = gcs.Client(credentials=AnonymousCredentials(), project=EMULATOR_PROJECT)
    else:
        try:
            client = gcs.Client()
        except auth_exceptions.DefaultCredentialsError as exc:
            raise StorageError(
                "no Google Cloud credentials found for gs:// access: run "
                "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, "
                f"or run on GCP with a service account ({exc})"
            ) from None
    # requests keeps 10 connections per host by default; read_many runs more threads.
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4 * DEFAULT_WORKERS)
    compat.widen_connection_pool(client, adapter)
    return client


def reset_client() -> None:
    """Forget cached GCS and S3 clients (tests that change the endpoint call this)."""
    with _client_lock:
        _clients.clear()


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _blob(uri: str) -> Blob:
    bucket, name = _split_gcs(uri)
    if not name or name.endswith("/"):
        raise StorageError(f"{uri}: expected a gs:// object URI, got a bucket or directory", uri)
    return _client().bucket(bucket).blob(name)


# --------------------------------------------------------------------------- errors


def _not_found_message(uri: str) -> str:
    """Say whether the bucket or only the object is missing (when we may ask)."""
    from google.api_core import exceptions as api_exceptions

    bucket, _ = _split_gcs(uri)
    try:
        bucket_exists = _client().bucket(bucket).exists(retry=_retry())
    except api_exceptions.GoogleAPIError:
        return f"{uri}: not found (no such object, or bucket gs://{bucket} does not exist)"
    if not bucket_exists:
        return f"{uri}: bucket gs://{bucket} does not exist"
    return f"{uri}: no such object"


def _translate_gcs_error(uri: str, exc: BaseException) -> StorageError | None:
    """The StorageError to raise for ``exc``, or None when it is not a GCS failure."""
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud.storage import exceptions as storage_exceptions

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, api_exceptions.NotFound):
        error: StorageError = StorageNotFoundError(_not_found_message(uri))
    elif isinstance(exc, api_exceptions.Forbidden | api_exceptions.Unauthorized):
        error = StoragePermissionError(
            f"{uri}: permission denied by GCS ({exc.code}: {exc.message}); check that the "
            "credentials in use may access this bucket"
        )
    elif isinstance(exc, api_exceptions.RetryError):
        error = StorageError(
            f"{uri}: GCS kept failing after retries ({exc.message}; last error: {exc.cause})"
        )
    elif isinstance(exc, api_exceptions.GoogleAPICallError):
        error = StorageError(f"{uri}: GCS request failed ({exc.code}: {exc.message})")
    elif isinstance(exc, auth_exceptions.GoogleAuthError):
        error = StorageError(f"{uri}: could not authenticate to GCS ({type(exc).__name__}: {exc})")
    elif isinstance(exc, storage_exceptions.DataCorruption):
        error = StorageError(f"{uri}: downloaded data failed its checksum check; try again")
    elif isinstance(exc, storage_exceptions.InvalidResponse | requests.RequestException):
        error = StorageError(f"{uri}: GCS request failed ({type(exc).__name__}: {exc})")
    else:
        return None
    error.uri = uri
    error.gcs_error = exc
    return error


@contextlib.contextmanager
def _translated_errors(uri: str, translate: Callable[[str, BaseException], StorageError | None]) -> Iterator[None]:
    """A store client's exceptions raised as the StorageError ``translate`` makes of them (others as they are)."""
    try:
        yield
    except Exception as exc:
        error = translate(uri, exc)
        if error is None or error is exc:
            raise
        raise error from None


def _gcs_errors(uri: str) -> contextlib.AbstractContextManager[None]:
    return _translated_errors(uri, _translate_gcs_error)


@contextlib.contextmanager
def _local_errors(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise _error(
            StorageNotFoundError, f"no such file or directory: {exc.filename or path}", path
        ) from None
    except PermissionError as exc:
        raise _error(StoragePermissionError, f"permission denied: {exc.filename or path}", path) from None
    except IsADirectoryError as exc:
        raise _error(StorageError, f"is a directory, expected a file: {exc.filename or path}", path) from None


# --------------------------------------------------------------------------- s3

@dataclasses.dataclass(frozen=True)
class S3Store:
    """An S3-compatible store and the keys to it (empty keys: boto3's credential chain)."""

    endpoint_url: str
    region: str = ""
    access_key_id: str = dataclasses.field(default="", repr=False)
    secret_access_key: str = dataclasses.field(default="", repr=False)


_minio_store: S3Store | None = None


def use_for_minio(store: S3Store | None) -> None:
    """Where ``minio://`` URIs are read and written from now on in this process
    (None: as ``s3://`` ones are, the endpoint from the environment)."""
    global _minio_store
    _minio_store = store


def can_reach_minio() -> bool:
    """Whether ``minio://`` URIs name a store here: one set with use_for_minio, or
    an S3 endpoint in the environment (``kic compile --s3-endpoint``), which they share with ``s3://``."""
    return _minio_store is not None or bool(s3_endpoint())

_S3_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
_S3_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem"}


def _split_s3(uri: str) -> tuple[str, str]:
    prefix = MINIO_SCHEME if uri.startswith(MINIO_SCHEME) else S3_SCHEME
    bucket, _, key = uri[len(prefix) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an {prefix} URI needs a bucket name, as in {prefix}bucket/path", uri)
    return bucket, key


def _s3_object(uri: str) -> tuple[str, str]:
    bucket, key = _split_s3(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: expected an s3:// object URI, got a bucket or directory", uri)
    return bucket, key


def _s3(uri: str):
    """The boto3 client for ``uri``'s store, per store and S3 settings in the
    environment (boto3 clients are thread-safe; sessions are not)."""
    store = _minio_store if uri.startswith(MINIO_SCHEME) else None
    settings = tuple(os.environ.get(name) for name in (
        *S3_ENDPOINT_ENVS, "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"))
    return _shared_client(("s3", settings, store), lambda: _new_s3_client(store))


def _new_s3_client(store: S3Store | None):
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
                    max_pool_connections=4 * DEFAULT_WORKERS)
    if store is not None or s3_endpoint():
        # S3-compatible stores (MinIO) serve every bucket under one host name; virtual-host
        # addressing would ask DNS for BUCKET.minio-service.kubeflow.
        config = config.merge(Config(s3={"addressing_style": "path"}))
    if store is None:
        return boto3.session.Session().client("s3", config=config)
    session = boto3.session.Session(aws_access_key_id=store.access_key_id or None,
                                    aws_secret_access_key=store.secret_access_key or None,
                                    region_name=store.region or None)
    return session.client("s3", endpoint_url=store.endpoint_url, config=config)


def _s3_transfer():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=S3_MULTIPART_BYTES, multipart_chunksize=S3_MULTIPART_BYTES,
                          max_concurrency=4)


def _s3_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _s3_where(uri: str) -> str:
    endpoint = _minio_store.endpoint_url if uri.startswith(MINIO_SCHEME) and _minio_store else s3_endpoint()
    return f"S3 endpoint {endpoint}" if endpoint else "S3"


def _s3_not_found_message(uri: str, code: str) -> str:
    bucket, _ = _split_s3(uri)
    if code == "NoSuchBucket":
        return f"{uri}: bucket s3://{bucket} does not exist"
    try:
        _s3(uri).head_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return f"{uri}: not found (no such object, or bucket s3://{bucket} does not exist)"
    return f"{uri}: no such object"


def _translate_s3_error(uri: str, exc: BaseException) -> StorageError | None:
    """The StorageError to raise for ``exc``, or None when it is not an S3 failure."""
    from boto3 import exceptions as boto3_exceptions
    from botocore import exceptions as botocore_exceptions

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, boto3_exceptions.S3UploadFailedError | boto3_exceptions.RetriesExceededError):
        # boto3 raises these while handling the client's error, which says more.
        cause = exc.__context__ or getattr(exc, "last_exception", None)
        if isinstance(cause, botocore_exceptions.ClientError | botocore_exceptions.BotoCoreError):
            exc = cause
    if isinstance(exc, botocore_exceptions.NoCredentialsError | botocore_exceptions.PartialCredentialsError) \
            and uri.startswith(MINIO_SCHEME):
        error: StorageError = StorageError(
            f"{uri}: no keys for Kubeflow Pipelines' store here: a pipeline step finds them in its cluster "
            "itself; elsewhere set AWS_ENDPOINT_URL_S3 to the store's S3 endpoint and AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY to its keys ({exc})")
    elif isinstance(exc, botocore_exceptions.NoCredentialsError | botocore_exceptions.PartialCredentialsError):
        error = StorageError(
            f"{uri}: no AWS credentials found for s3:// access: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL_S3 for MinIO or another S3-compatible store), or AWS_PROFILE, or run with "
            f"an IAM role ({exc})")
    elif isinstance(exc, botocore_exceptions.ClientError):
        code = _s3_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code in _S3_NOT_FOUND:
            error = StorageNotFoundError(_s3_not_found_message(uri, code))
        elif code in _S3_DENIED:
            error = StoragePermissionError(
                f"{uri}: permission denied by {_s3_where(uri)} ({code}: {message}); check that the credentials in "
                "use (AWS_ACCESS_KEY_ID, AWS_PROFILE, the pod's role) may access this bucket")
        else:
            retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            after = f" after {retries} retries" if retries else ""
            error = StorageError(f"{uri}: {_s3_where(uri)} request failed{after} ({code}: {message})")
    elif isinstance(exc, botocore_exceptions.BotoCoreError):
        error = StorageError(f"{uri}: {_s3_where(uri)} request failed ({type(exc).__name__}: {exc})")
    else:
        return None
    error.uri = uri
    error.s3_error = exc
    return error


def _s3_errors(uri: str) -> contextlib.AbstractContextManager[None]:
    return _translated_errors(uri, _translate_s3_error)


def _s3_pages(uri: str, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
    """Every object under ``prefix`` in ``uri``'s bucket (ListObjectsV2's entries), placeholders ending in '/'
    skipped."""
    bucket, _ = _split_s3(uri)
    arguments = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    for page in _s3(uri).get_paginator("list_objects_v2").paginate(**arguments):
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith("/"):
                yield entry


def _s3_version(entry: dict) -> str:
    """What changes when an object is rewritten: its ETag (a digest of the content, or of its parts),
    and its modification time and version id where the store gives them."""
    parts = [str(entry.get("ETag", "")).strip('"')]
    modified = entry.get("LastModified")
    if modified is not None:
        parts.append(modified.isoformat() if hasattr(modified, "isoformat") else str(modified))
    if entry.get("VersionId") and entry["VersionId"] != "null":
        parts.append(str(entry["VersionId"]))
    return ":".join(parts)


def _s3_head(uri: str) -> dict | None:
    """HeadObject's answer for the object ``uri``, None when there is none (the bucket missing included)."""
    bucket, key = _split_s3(uri)
    from botocore.exceptions import ClientError

    with _s3_errors(uri):
        try:
            return _s3(uri).head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _s3_code(exc) in _S3_NOT_FOUND:
                return None
            raise


def _s3_exists(uri: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = _split_s3(uri)
    with _s3_errors(uri):
        if not key.strip("/"):
            try:
                _s3(uri).head_bucket(Bucket=bucket)
                return True
            except ClientError as exc:
                if _s3_code(exc) in _S3_NOT_FOUND:
                    return False
                raise
        if not key.endswith("/") and _s3_head(uri) is not None:
            return True
        try:
            answer = _s3(uri).list_objects_v2(Bucket=bucket, Prefix=_gcs_dir_prefix(key), MaxKeys=1)
        except ClientError as exc:
            if _s3_code(exc) in _S3_NOT_FOUND:
                return False
            raise
        return bool(answer.get("KeyCount") or answer.get("Contents"))


def _s3_read(uri: str, limit: int | None = None) -> bytes:
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    bucket, key = _s3_object(uri)
    with _s3_errors(uri):
        # One GET (read_many reads thousands of images: no HEAD and no transfer threads per file). botocore
        # retries the request, not a body cut short mid-stream: that is retried here.
        attempt = 1
        while True:
            response = _s3(uri).get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                if limit is not None and response["ContentLength"] > limit:
                    raise ObjectTooLarge(uri, limit, response["ContentLength"])  # the body is closed unread
                return body.read()
            except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError):
                if attempt >= S3_MAX_ATTEMPTS:
                    raise
                attempt += 1
            finally:
                body.close()


def _s3_write(uri: str, data: bytes) -> None:
    bucket, key = _s3_object(uri)
    with _s3_errors(uri):
        _s3(uri).put_object(Bucket=bucket, Key=key, Body=data)


def _s3_list(uri: str) -> list[str]:
    bucket, key = _split_s3(uri)
    with _s3_errors(uri):
        keys = [entry["Key"] for entry in _s3_pages(uri, _gcs_dir_prefix(key))]
    return sorted(f"{scheme(uri)}{bucket}/{name}" for name in keys)


def _s3_stats(uri: str, recursive: bool) -> list[FileStat]:
    bucket, key = _split_s3(uri)
    if key and not key.endswith("/"):
        head = _s3_head(uri)
        if head is not None:
            return [FileStat("", int(head.get("ContentLength") or 0), _s3_version(head))]
    prefix = _gcs_dir_prefix(key)
    with _s3_errors(uri):
        stats = [FileStat(entry["Key"][len(prefix):], int(entry.get("Size") or 0), _s3_version(entry))
                 for entry in _s3_pages(uri, prefix, None if recursive else "/")]
    return sorted(stats, key=lambda stat: stat.name)


def _s3_copy(src: str, dst: str) -> None:
    """Copies to or from S3; S3 to S3 within the store, any other pair through a local file."""
    if is_s3(src) and is_s3(dst) and scheme(src) == scheme(dst):
        source_bucket, source_key = _s3_object(src)
        bucket, key = _s3_object(dst)
        with _s3_errors(src):
            _s3(src).copy({"Bucket": source_bucket, "Key": source_key}, bucket, key, Config=_s3_transfer())
    elif is_s3(src):
        if is_remote(dst):  # another store: GCS, or s3:// and minio://
            with tempfile.TemporaryDirectory(prefix="kic-copy-") as folder:
                local = os.path.join(folder, "object")
                _s3_copy(src, local)
                copy_file(local, dst)
            return
        bucket, key = _s3_object(src)
        with _atomic_local_path(dst) as tmp, _s3_errors(src):
            _s3(src).download_file(bucket, key, tmp, Config=_s3_transfer())
    else:
        if is_gcs(src):
            with tempfile.TemporaryDirectory(prefix="kic-copy-") as folder:
                local = os.path.join(folder, "object")
                copy_file(src, local)
                _s3_copy(local, dst)
            return
        if not os.path.isfile(src):
            raise _error(StorageNotFoundError, f"no such file: {src}", src)
        bucket, key = _s3_object(dst)
        with _s3_errors(dst):
            _s3(dst).upload_file(src, bucket, key, Config=_s3_transfer())


def _s3_remove_tree(uri: str) -> None:
    bucket, key = _split_s3(uri)
    key = key.rstrip("/")
    if not key:
        raise _error(StorageError, f"refusing to remove everything in bucket {uri}", uri)
    from botocore.exceptions import ClientError

    with _s3_errors(uri):
        try:
            # Placeholders ("dir/") included: they would otherwise keep the prefix alive.
            pages = _s3(uri).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
            keys = [entry["Key"] for page in pages for entry in page.get("Contents", [])]
        except ClientError as exc:
            if _s3_code(exc) == "NoSuchBucket":
                return
            raise
        if _s3_head(uri) is not None:
            keys.append(key)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a request
            answer = _s3(uri).delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": name} for name in keys[start:start + 1000]], "Quiet": True})
            failed = answer.get("Errors", [])
            if failed:
                first = failed[0]
                raise StorageError(f"{uri}: {len(failed)} objects could not be deleted, as "
                                   f"s3://{bucket}/{first.get('Key')} ({first.get('Code')}: {first.get('Message')})")


# --------------------------------------------------------------------------- single files


def exists(uri: str) -> bool:
    """True for an existing file or directory; on GCS and S3, an object or a non-empty prefix."""
    if is_s3(uri):
        return _s3_exists(uri)
    if not is_gcs(uri):
        return os.path.exists(uri)
    bucket_name, name = _split_gcs(uri)
    with _gcs_errors(uri):
        bucket = _client().bucket(bucket_name)
        if not name.strip("/"):
            return bucket.exists(retry=_retry())
        if not name.endswith("/") and bucket.blob(name).exists(retry=_retry()):
            return True
        try:
            listing = _client().list_blobs(
                bucket_name, prefix=_gcs_dir_prefix(name), max_results=1, retry=_retry()
            )
            return any(True for _ in listing)
        except Exception as exc:
            from google.api_core import exceptions as api_exceptions

            if isinstance(exc, api_exceptions.NotFound):  # the bucket itself is missing
                return False
            raise


def read_bytes(uri: str, *, limit: int | None = None) -> bytes:
    """A file's or object's bytes. With ``limit``, one over it raises
    ObjectTooLarge having read at most that many bytes and a network chunk
    (none where the store gives the size first: S3, a local file)."""
    if is_s3(uri):
        return _s3_read(uri, limit)
    if is_gcs(uri):
        return _gcs_read(uri, limit)
    with _local_errors(uri):
        # A FIFO would wait for a writer forever and a device such as /dev/zero never ends: neither is a file
        # anyone means to hand kic (a manifest, a search space, a weights file).
        status = os.stat(uri)
        if not stat.S_ISREG(status.st_mode):
            raise _error(StorageError, "not a regular file (a FIFO, device, socket or folder): not read", uri)
        if limit is not None and status.st_size > limit:
            raise ObjectTooLarge(uri, limit, status.st_size)
        with open(uri, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:  # it grew since the stat
        raise ObjectTooLarge(uri, limit)
    return data


class _LimitReached(Exception):
    pass


class _CappedSink(io.RawIOBase):
    """A download's destination that ends it once it holds more than ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.data = limit, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += chunk
        if len(self.data) > self.limit:
            raise _LimitReached
        return len(chunk)


def _gcs_read(uri: str, limit: int | None) -> bytes:
    if limit is None:
        with _gcs_errors(uri):
            return _blob(uri).download_as_bytes(retry=_retry())
    sink = _CappedSink(limit)
    try:
        with _gcs_errors(uri):
            # Streamed into the sink, which stops the response past the limit (a ranged request would
            # answer an empty object with an error).
            _blob(uri).download_to_file(sink, retry=_retry())
    except _LimitReached:
        raise ObjectTooLarge(uri, limit) from None
    return bytes(sink.data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        _s3_write(uri, data)
        return
    if is_gcs(uri):
        with _gcs_errors(uri):
            _blob(uri).upload_from_string(data, retry=_retry())
        return
    with _atomic_local_path(uri) as tmp, _local_errors(uri), open(tmp, "wb") as handle:
        handle.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


@contextlib.contextmanager
def _atomic_local_path(path: str) -> Iterator[str]:
    """A temporary sibling of ``path`` that replaces it once the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    with _local_errors(parent):
        os.makedirs(parent, exist_ok=True)
    # Unique per call: several threads of one process may write the same path.
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_many(uris: Iterable[str], workers: int = DEFAULT_WORKERS, *,
              limit: int | None = None) -> Iterator[tuple[str, bytes | Exception]]:
    """Read files in parallel threads, yielding ``(uri, bytes or exception)`` in input order.

    One unreadable file yields its exception and the batch goes on (one over
    ``limit`` bytes: ObjectTooLarge, not read past it). At most a few
    times ``workers`` reads are in flight, so a long ``uris`` iterable is not read
    into memory ahead of the consumer.
    """
    yield from _ordered_parallel(uris, functools.partial(read_bytes, limit=limit), workers)


def _ordered_parallel(
    items: Iterable[str], work: Callable[[str], _T], workers: int
) -> Iterator[tuple[str, _T | Exception]]:
    def attempt(item: str) -> _T | Exception:
        try:
            return work(item)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, per item
            return exc

    window = max(1, workers) * 4
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="kic-storage")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(attempt, item)))
            if len(pending) >= window:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        while pending:
            done_item, future = pending.popleft()
            yield done_item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_parallel(items: Iterable[str], work: Callable[[str], object], workers: int) -> None:
    """Run ``work`` on every item; raise the first failure after all were attempted."""
    first_error: Exception | None = None
    for _, result in _ordered_parallel(items, work, workers):
        if isinstance(result, Exception) and first_error is None:
            first_error = result
    if first_error is not None:
        raise first_error


# --------------------------------------------------------------------------- directories


def list_files(uri: str) -> list[str]:
    """Every file under the directory/prefix ``uri``, recursively, as sorted full URIs/paths.

    A missing local directory raises StorageNotFoundError; on GCS and S3 a prefix
    without objects is simply empty (they have no directories), but a missing bucket raises.
    """
    if is_s3(uri):
        return _s3_list(uri)
    if is_gcs(uri):
        return _list_gcs(uri)
    return _list_local(uri)


def _list_gcs(uri: str) -> list[str]:
    bucket, name = _split_gcs(uri)
    prefix = _gcs_dir_prefix(name)
    with _gcs_errors(uri):
        # Only names are needed; asking for less keeps million-object listings light.
        blobs = _client().list_blobs(
            bucket, prefix=prefix, fields="items(name),nextPageToken", retry=_retry()
        )
        names = [blob.name for blob in blobs if not blob.name.endswith("/")]
    return sorted(f"{GCS_SCHEME}{bucket}/{object_name}" for object_name in names)


def _require_local_directory(path: str) -> None:
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise _error(StorageError, f"not a directory: {path}", path)
        raise _error(StorageNotFoundError, f"no such directory: {path}", path)


def _list_local(path: str) -> list[str]:
    _require_local_directory(path)
    files: list[str] = []
    seen_dirs: set[str] = set()

    def fail_listing(error: OSError) -> None:
        raise _error(StorageError, f"cannot list {error.filename}: {error.strerror}", path)

    # Follow symlinks (datasets are often assembled from linked folders) but never
    # enter the same real directory twice, which would loop forever on a cycle.
    for dirpath, dirnames, filenames in os.walk(path, onerror=fail_listing, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        files.extend(os.path.join(dirpath, filename) for filename in filenames)
    return sorted(files)


@dataclasses.dataclass(frozen=True)
class FileStat:
    name: str  # relative to the listed directory ('/'-separated); "" for a single file
    size: int
    # A GCS object's generation; an S3 object's ETag, modification time and version id (when versioned);
    # a local file's modification time in nanoseconds.
    version: str


def list_stats(uri: str, *, recursive: bool = True) -> list[FileStat]:
    """Every file under the directory/prefix ``uri`` (or the single file
    ``uri``), with its size and version, sorted by name: what is there now,
    cheaply (one listing, no reads). Not ``recursive``: only the files
    directly in the directory, none of its subdirectories' (a ``uri`` ending
    in ``/`` is taken as a directory at once, sparing a request on GCS and S3)."""
    if is_s3(uri):
        return _s3_stats(uri, recursive)
    if is_gcs(uri):
        bucket_name, name = _split_gcs(uri)
        with _gcs_errors(uri):
            if name and not name.endswith("/"):
                blob = _client().bucket(bucket_name).get_blob(name, retry=_retry())
                if blob is not None:
                    return [FileStat("", int(blob.size or 0), str(blob.generation))]
            prefix = _gcs_dir_prefix(name)
            blobs = _client().list_blobs(bucket_name, prefix=prefix, delimiter=None if recursive else "/",
                                         retry=_retry(), fields="items(name,size,generation),nextPageToken")
            stats = [FileStat(blob.name[len(prefix):], int(blob.size or 0), str(blob.generation))
                     for blob in blobs if not blob.name.endswith("/")]
        return sorted(stats, key=lambda stat: stat.name)
    if os.path.isfile(uri):
        with _local_errors(uri):
            status = os.stat(uri)
        return [FileStat("", status.st_size, str(status.st_mtime_ns))]
    stats = []
    files = _list_local(uri) if recursive else _list_local_directory(uri)
    for path, relative in zip(files, _relative_names(uri, files), strict=True):
        with _local_errors(path):
            status = os.stat(path)
        stats.append(FileStat(relative, status.st_size, str(status.st_mtime_ns)))
    return stats


def _list_local_directory(path: str) -> list[str]:
    """The files directly in the directory ``path`` (links followed), as sorted paths."""
    _require_local_directory(path)
    with _local_errors(path), os.scandir(path) as entries:
        return sorted(entry.path for entry in entries if entry.is_file())


def _relative_names(uri: str, files: list[str]) -> list[str]:
    """Names of ``files`` relative to the directory ``uri``, always '/'-separated."""
    if is_remote(uri):
        bucket, name = _split_gcs(uri) if is_gcs(uri) else _split_s3(uri)
        base = f"{scheme(uri)}{bucket}/{_gcs_dir_prefix(name)}"
        return [file[len(base) :] for file in files]
    return [os.path.relpath(file, uri).replace(os.sep, "/") for file in files]


def _local_target(local_dir: str, relative: str, source: str) -> str:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _error(StorageError, f"{source}: object name cannot be stored safely as a local file", source)
    return os.path.join(local_dir, *parts)


def _target(dst_dir: str, relative: str, source: str) -> str:
    if is_remote(dst_dir):
        bucket, name = _split_gcs(dst_dir) if is_gcs(dst_dir) else _split_s3(dst_dir)
        return f"{scheme(dst_dir)}{bucket}/{_gcs_dir_prefix(name)}{relative}"
    return _local_target(dst_dir, relative, source)


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any mix of local paths, gs:// and s3:// URIs (commit-last)."""
    if is_s3(src) or is_s3(dst):
        _s3_copy(src, dst)
    elif is_gcs(src) and is_gcs(dst):
        source_blob = _blob(src)
        target_blob = _blob(dst)
        with _gcs_errors(src):
            token, _, _ = target_blob.rewrite(source_blob, retry=_retry())
            while token is not None:  # large or cross-location copies take several calls
                token, _, _ = target_blob.rewrite(source_blob, token=token, retry=_retry())
    elif is_gcs(src):
        with _atomic_local_path(dst) as tmp, _gcs_errors(src):
            _blob(src).download_to_filename(tmp, retry=_retry())
    elif is_gcs(dst):
        if not os.path.isfile(src):
            raise _error(StorageNotFoundError, f"no such file: {src}", src)
        with _gcs_errors(dst):
            _blob(dst).upload_from_filename(src, retry=_retry())
    else:
        with _atomic_local_path(dst) as tmp, _local_errors(src):
            shutil.copyfile(src, tmp)


def copy_dir(src: str, dst: str, workers: int = DEFAULT_WORKERS) -> list[str]:
    """Copy every file under ``src`` to the same relative name under ``dst``.

    Any mix of local, gs:// and s3:// works; files are copied in parallel threads.
    Returns the written destination files (sorted). Existing files not in ``src``
    are left alone.
    """
    sources = list_files(src)
    targets = [
        _target(dst, relative, source)
        for relative, source in zip(_relative_names(src, sources), sources, strict=True)
    ]
    by_target = dict(zip(targets, sources, strict=True))
    if not is_remote(dst):
        makedirs(dst)
    _run_parallel(targets, lambda target: copy_file(by_target[target], target), workers)
    return sorted(targets)


def upload_dir(local_dir: str, uri: str, workers: int = DEFAULT_WORKERS) -> list[str]:
    """Upload a local directory tree under the gs:// or s3:// (or local) prefix ``uri``."""
    return copy_dir(local_dir, uri, workers)


def download_dir(uri: str, local_dir: str, workers: int = DEFAULT_WORKERS) -> list[str]:
    """Download every object under the gs:// or s3:// (or local) directory ``uri`` into ``local_dir``."""
    return copy_dir(uri, local_dir, workers)


def makedirs(uri: str) -> None:
    """Create a local directory (and parents); a no-op on GCS and S3, which have no directories."""
    if not is_remote(uri):
        with _local_errors(uri):
            os.makedirs(uri, exist_ok=True)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file or directory ``uri``, for libraries that need one.

    Local paths are yielded as they are. A gs:// or s3:// object or prefix is
    downloaded into a temporary directory (keeping its base name) that is deleted
    afterwards; changes made to the copy are not uploaded.
    """
    if not is_remote(uri):
        if not os.path.exists(uri):
            raise _error(StorageNotFoundError, f"no such file or directory: {uri}", uri)
        yield uri
        return
    _, name = _split_gcs(uri) if is_gcs(uri) else _split_s3(uri)
    with tempfile.TemporaryDirectory(prefix="kic-") as tmp:
        local = os.path.join(tmp, posixpath.basename(name.rstrip("/")) or "root")
        is_object = not name.endswith("/") and bool(name)
        if is_object and is_s3(uri):
            is_object = _s3_head(uri) is not None
        elif is_object:
            with _gcs_errors(uri):
                is_object = _blob(uri).exists(retry=_retry())
        if is_object:
            copy_file(uri, local)
        elif not download_dir(uri, local):
            message = _s3_not_found_message(uri, "") if is_s3(uri) else _not_found_message(uri)
            raise _error(StorageNotFoundError, message, uri)
        yield local


# What an archive may unpack to. The largest exports (ConvNeXt XLarge, EfficientNet-B7) are under 2 GB;
# a gzip stream of zeros expands about 1,000-fold, so a 2 MB file could otherwise write 2 GB.
TARBALL_MAX_BYTES = 16 * 1024**3
TARBALL_MAX_MEMBERS = 100_000
# Model weights barely compress (about 1.1:1); above this ratio, and past the floor, it is a bomb.
TARBALL_MAX_RATIO = 100
TARBALL_RATIO_FLOOR = 256 * 1024**2


def extract_tarball(path: str, destination: str, *, max_bytes: int = TARBALL_MAX_BYTES,
                    max_members: int = TARBALL_MAX_MEMBERS) -> str:
    """Unpacks the local archive ``path`` (.tar, .tar.gz) into ``destination``
    and returns it. tarfile's "data" filter refuses absolute names, names and
    links that lead out of ``destination``, and device files.

    Each member's declared size is judged from its header before its data is
    written (tarfile then writes exactly that many bytes): the running total
    may not exceed ``max_bytes``, ``TARBALL_MAX_RATIO`` times the archive's
    own size (past ``TARBALL_RATIO_FLOOR``), nor the free space of
    ``destination``'s disk; nor may there be more than ``max_members``
    members. A damaged or cut archive is a DataError, not an EOFError."""
    import gzip
    import tarfile
    import zlib

    from kic.errors import DataError

    try:
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path} is not a tar archive")
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} cannot be read as a tar archive: {error or type(error).__name__}") from None
    os.makedirs(destination, exist_ok=True)
    limit = min(max_bytes, max(TARBALL_RATIO_FLOOR, TARBALL_MAX_RATIO * os.path.getsize(path)),
                shutil.disk_usage(destination).free)
    total = members = 0
    try:
        with tarfile.open(path) as archive:
            for member in archive:  # one header at a time: a bomb is refused before its data is read
                members += 1
                total += max(0, member.size)
                if members > max_members:
                    raise DataError(f"{path}: more than {max_members:,} archive members; not a model package")
                if total > limit:
                    raise DataError(
                        f"{path}: the archive unpacks to more than {limit:,} bytes (member {member.name!r} declares "
                        f"{member.size:,}), more than the limit for a {os.path.getsize(path):,}-byte archive, "
                        "kic's limit or the free disk space allows: refusing it")
                archive.extract(member, destination, filter="data")
    except tarfile.FilterError as error:
        raise DataError(f"{path}: refusing an unsafe archive member: {error}") from None
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{path} is damaged or cut short: {error or type(error).__name__}") from None
    return destination


def remove_tree(uri: str, workers: int = DEFAULT_WORKERS) -> None:
    """Delete a file/object or everything under a directory/prefix; missing is fine.

    Refuses to empty a whole bucket or a filesystem root.
    """
    if is_s3(uri):
        _s3_remove_tree(uri)
        return
    if not is_gcs(uri):
        if os.path.dirname(os.path.abspath(uri)) == os.path.abspath(uri):
            raise _error(StorageError, f"refusing to remove a filesystem root: {uri}", uri)
        with _local_errors(uri):
            if os.path.isdir(uri) and not os.path.islink(uri):
                shutil.rmtree(uri)
            elif os.path.lexists(uri):
                os.remove(uri)
        return
    bucket_name, name = _split_gcs(uri)
    name = name.rstrip("/")
    if not name:
        raise _error(StorageError, f"refusing to remove everything in bucket {uri}", uri)
    with _gcs_errors(uri):
        client = _client()
        # Placeholders ("dir/") included: they would otherwise keep the prefix alive.
        listing = client.list_blobs(
            bucket_name, prefix=f"{name}/", fields="items(name),nextPageToken", retry=_retry()
        )
        names = [blob.name for blob in listing]
        if client.bucket(bucket_name).blob(name).exists(retry=_retry()):
            names.append(name)
    _run_parallel(
        [f"{GCS_SCHEME}{bucket_name}/{object_name}" for object_name in names], _delete_object, workers
    )


def _delete_object(uri: str) -> None:
    from google.api_core import exceptions as api_exceptions

    bucket, name = _split_gcs(uri)
    with _gcs_errors(uri):
        try:
            _client().bucket(bucket).blob(name).delete(retry=_retry())
        except api_exceptions.NotFound:  # gone already, e.g. a retried delete that had succeeded
            pass
