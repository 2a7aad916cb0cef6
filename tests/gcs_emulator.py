"""pytest fixtures: a real GCS JSON API on loopback, and a flaky proxy in front of it.

Registered for all tests by ``pytest_plugins = ["gcs_emulator"]`` in conftest.py.

``gcs_emulator`` (session scope)
    Starts ``gcp-storage-emulator`` (in memory, in a thread) on 127.0.0.1 and a free
    port, and sets ``STORAGE_EMULATOR_HOST`` for the whole session (also inherited by
    subprocesses started from tests), so ``kic.storage`` and any
    ``google.cloud.storage.Client`` talk to it with anonymous credentials. Yields a
    :class:`GcsEmulator`:

    * ``.endpoint``      - ``"http://127.0.0.1:PORT"``
    * ``.new_bucket()``  - creates a fresh, empty bucket and returns ``"gs://NAME"``;
      use one per test instead of cleaning up.
    * ``.client``        - a ``google.cloud.storage.Client`` bound to the emulator, for
      seeding or checking objects independently of ``kic.storage``.

    Example::

        def test_prepare_from_gcs(gcs_emulator, tmp_path):
            root = gcs_emulator.new_bucket()
            storage.upload_dir(str(tmp_path / "images"), f"{root}/images")
            ...

``flaky_gcs`` (function scope, uses ``gcs_emulator``)
    Starts a loopback HTTP reverse proxy in front of the emulator that answers every
    ``fail_every``-th request (default 3rd) with HTTP ``fail_status`` (default 503)
    without forwarding it, and
    points ``STORAGE_EMULATOR_HOST`` at the proxy for the test (restored afterwards).
    Yields a :class:`FlakyProxy` with ``.endpoint``, ``.injected_failures`` (count of
    failures sent), ``.failed_requests`` ("METHOD /path?query" of each),
    ``.forwarded`` (requests passed through) and mutable
    ``.fail_every`` (0 pauses failures, e.g. while seeding; 1 fails everything) and
    ``.fail_status`` (e.g. 403 to see how permission errors surface; keep 5xx with
    ``fail_every=1`` out of tests: the client retries those for two minutes);
    ``.fail_next(n)`` fails the next n requests, to aim at one call. kic's retries
    wait no time between tries while it runs. Buckets made with
    ``gcs_emulator.new_bucket()`` are reachable through it. The ``kic.storage`` client
    cache is reset on entry and exit.

Both servers are stopped at teardown, also when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

LOOPBACK = "127.0.0.1"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# The emulator serves one request at a time; a deep accept queue keeps parallel
# clients (read_many uses 16 threads) waiting instead of stalling in SYN retries.
_ACCEPT_BACKLOG = 128
# Headers that describe one hop, not the request; never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


class GcsEmulator:
    """A running emulator; see the module docstring."""

    def __init__(self, endpoint: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs

        self.endpoint = endpoint
        self.client = gcs.Client(
            credentials=AnonymousCredentials(),
            project="kic-test",
            client_options={"api_endpoint": endpoint},
        )
        self._names = itertools.count()

    def new_bucket(self, prefix: str = "kic-test") -> str:
        name = f"{prefix}-{next(self._names)}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(name)
        return f"gs://{name}"


def _start_emulator():
    from gcp_storage_emulator.server import create_server

    server = create_server(LOOPBACK, 0, in_memory=True)
    server.start()
    try:
        # The emulator does not expose its port; with port 0 the OS picked a free one.
        httpd = server._api._httpd
        httpd.socket.listen(_ACCEPT_BACKLOG)
        httpd.handle_error = _quiet_about_clients_that_hang_up(httpd.handle_error)
        host, port = httpd.server_address[:2]
    except Exception:
        server.stop()
        raise
    return server, f"http://{host}:{port}"


def _quiet_about_clients_that_hang_up(handle_error):
    """A read that stops at its byte limit closes the connection mid-response, on purpose: the
    emulator's thread would print that as a traceback."""

    def handle(request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(request, client_address)

    return handle


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    server, endpoint = _start_emulator()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(EMULATOR_ENV, endpoint)
            yield GcsEmulator(endpoint)
    finally:
        server.stop()
        reset_kic_client()


class FlakyProxy(ThreadingHTTPServer):
    """Forwards requests to ``upstream`` but answers every ``fail_every``-th with ``fail_status``."""

    daemon_threads = True
    request_queue_size = _ACCEPT_BACKLOG

    def __init__(self, upstream: str, fail_every: int = 3) -> None:
        super().__init__((LOOPBACK, 0), _ProxyHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.endpoint = f"http://{LOOPBACK}:{self.server_address[1]}"
        self.fail_every = fail_every
        self.fail_status = 503
        self.injected_failures = 0
        self.failed_requests: list[str] = []
        self.authorizations: list[str] = []  # each request's Authorization header, as sent
        self.forwarded = 0
        self._requests = 0
        self._forced = 0
        self._lock = threading.Lock()

    def fail_next(self, count: int = 1) -> None:
        """Also fail the next ``count`` requests, whatever ``fail_every`` says."""
        with self._lock:
            self._forced += count

    def should_fail(self, request_line: str) -> bool:
        with self._lock:
            self._requests += 1
            fail = self._forced > 0 or (self.fail_every > 0 and self._requests % self.fail_every == 0)
            self._forced -= 1 if self._forced > 0 else 0
            if fail:
                self.injected_failures += 1
                self.failed_requests.append(request_line)
            else:
                self.forwarded += 1
            return fail


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def _relay(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reply(501, {"Content-Type": "text/plain"}, b"flaky_gcs: chunked bodies unsupported")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        if self.server.should_fail(f"{self.command} {self.path}"):
            status = self.server.fail_status
            error = {"error": {"code": status, "message": "injected by flaky_gcs", "errors": []}}
            self._reply(status, {"Content-Type": "application/json"}, json.dumps(error).encode())
            return
        # Host is kept as sent so URLs the emulator builds (resumable upload
        # sessions, media links) point back at the proxy.
        headers = {key: value for key, value in self.headers.items() if key.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            reply_headers = {
                key: value for key, value in response.getheaders() if key.lower() not in _HOP_BY_HOP
            }
            if self.command == "HEAD":  # no body, but the size of the one a GET would get (S3's HeadObject)
                reply_headers["Content-Length"] = response.getheader("Content-Length", "0")
            self._reply(response.status, reply_headers, payload)
        finally:
            upstream.close()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def proxying(proxy: FlakyProxy, endpoint_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """Serves ``proxy`` in a thread, with kic's storage client sent through it (``endpoint_env``), until the
    block ends."""
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"flaky-proxy-{endpoint_env}", daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(endpoint_env, proxy.endpoint)
        reset_kic_client()
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
        reset_kic_client()


@pytest.fixture
def flaky_gcs(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    with proxying(FlakyProxy(gcs_emulator.endpoint), EMULATOR_ENV, monkeypatch) as proxy:
        _retry_at_once(monkeypatch)
        yield proxy


def _retry_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """kic's retry policy as is, but without the waits between tries: the
    failures here are injected, so backing off only slows the tests down."""
    try:
        from kic import storage
    except ImportError:
        return
    policy = storage._retry()
    monkeypatch.setattr(storage, "_retry", lambda: policy.with_delay(initial=0.0, maximum=0.0, multiplier=1.0))


def reset_kic_client() -> None:
    try:
        from kic import storage
    except ImportError:  # fixtures stay usable where kic is not importable
        return
    storage.reset_client()


__all__ = ["FlakyProxy", "GcsEmulator", "flaky_gcs", "gcs_emulator", "proxying", "reset_kic_client"]
