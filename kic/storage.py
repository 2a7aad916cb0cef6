"""One file API over local paths and ``gs://`` URIs.

Everything in kic that touches user data or artifacts goes through here, so
GCS support, retries and commit-last writes live in one module.

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
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import posixpath
import shutil
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
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "kic-emulator"
DEFAULT_WORKERS = 16

_T = TypeVar("_T")


class StorageError(UserError, OSError):
    """A storage operation failed for a reason worth showing to the user as is.

    ``uri`` is the path or URI concerned; GCS failures keep the original client
    exception in ``gcs_error`` (not chained, so tracebacks stay short).
    """

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.gcs_error: BaseException | None = None


class StorageNotFoundError(StorageError, NotFoundError):
    """The file, object, directory or bucket does not exist."""


class StoragePermissionError(StorageError, UnreachableError, PermissionError):
    """The credentials in use may not perform the operation."""


def _error(kind: type[StorageError], message: str, uri: str) -> StorageError:
    return kind(message, uri)


# --------------------------------------------------------------------------- paths


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
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
_clients: dict[tuple[int, str | None], Client] = {}


def _client() -> Client:
    """One client per process and endpoint, shared by all threads.

    Keyed on the pid (a forked child must not reuse its parent's connections) and on
    ``STORAGE_EMULATOR_HOST`` (tests switch between an emulator and a proxy in front
    of it).
    """
    emulator = os.environ.get(EMULATOR_ENV) or None
    key = (os.getpid(), emulator)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            client = _new_client(emulator)
            _clients[key] = client
        return client


def _new_client(emulator: str | None) -> Client:
    import requests.adapters
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage as gcs

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
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


def reset_client() -> None:
    """Forget cached GCS clients (tests that change the endpoint call this)."""
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
def _gcs_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = _translate_gcs_error(uri, exc)
        if error is None or error is exc:
            raise
        raise error from None


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


# --------------------------------------------------------------------------- single files


def exists(uri: str) -> bool:
    """True for an existing file or directory; on GCS, an object or a non-empty prefix."""
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


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        with _gcs_errors(uri):
            return _blob(uri).download_as_bytes(retry=_retry())
    with _local_errors(uri), open(uri, "rb") as handle:
        return handle.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
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


def read_many(uris: Iterable[str], workers: int = DEFAULT_WORKERS) -> Iterator[tuple[str, bytes | Exception]]:
    """Read files in parallel threads, yielding ``(uri, bytes or exception)`` in input order.

    One unreadable file yields its exception and the batch goes on. At most a few
    times ``workers`` reads are in flight, so a long ``uris`` iterable is not read
    into memory ahead of the consumer.
    """
    yield from _ordered_parallel(uris, read_bytes, workers)


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

    A missing local directory raises StorageNotFoundError; on GCS a prefix without
    objects is simply empty (GCS has no directories), but a missing bucket raises.
    """
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
    version: str  # a GCS object's generation; a local file's modification time in nanoseconds


def list_stats(uri: str, *, recursive: bool = True) -> list[FileStat]:
    """Every file under the directory/prefix ``uri`` (or the single file
    ``uri``), with its size and version, sorted by name: what is there now,
    cheaply (one listing, no reads). Not ``recursive``: only the files
    directly in the directory, none of its subdirectories' (a ``uri`` ending
    in ``/`` is taken as a directory at once, sparing a request on GCS)."""
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
    if is_gcs(uri):
        bucket, name = _split_gcs(uri)
        base = f"{GCS_SCHEME}{bucket}/{_gcs_dir_prefix(name)}"
        return [file[len(base) :] for file in files]
    return [os.path.relpath(file, uri).replace(os.sep, "/") for file in files]


def _local_target(local_dir: str, relative: str, source: str) -> str:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _error(StorageError, f"{source}: object name cannot be stored safely as a local file", source)
    return os.path.join(local_dir, *parts)


def _target(dst_dir: str, relative: str, source: str) -> str:
    if is_gcs(dst_dir):
        bucket, name = _split_gcs(dst_dir)
        return f"{GCS_SCHEME}{bucket}/{_gcs_dir_prefix(name)}{relative}"
    return _local_target(dst_dir, relative, source)


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any mix of local paths and gs:// URIs (commit-last)."""
    if is_gcs(src) and is_gcs(dst):
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

    Any mix of local and gs:// works; files are copied in parallel threads.
    Returns the written destination files (sorted). Existing files not in ``src``
    are left alone.
    """
    sources = list_files(src)
    targets = [
        _target(dst, relative, source)
        for relative, source in zip(_relative_names(src, sources), sources, strict=True)
    ]
    by_target = dict(zip(targets, sources, strict=True))
    if not is_gcs(dst):
        makedirs(dst)
    _run_parallel(targets, lambda target: copy_file(by_target[target], target), workers)
    return sorted(targets)


def upload_dir(local_dir: str, uri: str, workers: int = DEFAULT_WORKERS) -> list[str]:
    """Upload a local directory tree under the gs:// (or local) prefix ``uri``."""
    return copy_dir(local_dir, uri, workers)


def download_dir(uri: str, local_dir: str, workers: int = DEFAULT_WORKERS) -> list[str]:
    """Download every object under the gs:// (or local) directory ``uri`` into ``local_dir``."""
    return copy_dir(uri, local_dir, workers)


def makedirs(uri: str) -> None:
    """Create a local directory (and parents); a no-op on GCS, which has no directories."""
    if not is_gcs(uri):
        with _local_errors(uri):
            os.makedirs(uri, exist_ok=True)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file or directory ``uri``, for libraries that need one.

    Local paths are yielded as they are. A gs:// object or prefix is downloaded into
    a temporary directory (keeping its base name) that is deleted afterwards; changes
    made to the copy are not uploaded.
    """
    if not is_gcs(uri):
        if not os.path.exists(uri):
            raise _error(StorageNotFoundError, f"no such file or directory: {uri}", uri)
        yield uri
        return
    _, name = _split_gcs(uri)
    with tempfile.TemporaryDirectory(prefix="kic-") as tmp:
        local = os.path.join(tmp, posixpath.basename(name.rstrip("/")) or "root")
        is_object = not name.endswith("/") and bool(name)
        if is_object:
            with _gcs_errors(uri):
                is_object = _blob(uri).exists(retry=_retry())
        if is_object:
            copy_file(uri, local)
        elif not download_dir(uri, local):
            raise _error(StorageNotFoundError, _not_found_message(uri), uri)
        yield local


def extract_tarball(path: str, destination: str) -> str:
    """Unpacks the local archive ``path`` (.tar, .tar.gz) into ``destination``
    and returns it. tarfile's "data" filter refuses absolute names, names and
    links that lead out of ``destination``, and device files."""
    import tarfile

    from kic.errors import DataError

    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is not a tar archive")
    with tarfile.open(path) as archive:
        try:
            archive.extractall(destination, filter="data")
        except tarfile.FilterError as error:
            raise DataError(f"{path}: refusing an unsafe archive member: {error}") from None
    return destination


def remove_tree(uri: str, workers: int = DEFAULT_WORKERS) -> None:
    """Delete a file/object or everything under a directory/prefix; missing is fine.

    Refuses to empty a whole bucket or a filesystem root.
    """
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
