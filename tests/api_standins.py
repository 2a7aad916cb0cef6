"""Loopback stand-ins of the Kubeflow Pipelines and Vertex AI REST APIs that
record what the real clients send.

Only the calls ``kic submit`` and ``kic schedule`` make are answered, with the
smallest response each client accepts; every request is kept (method, path,
query, headers, JSON body) for the test to assert on. They are HTTP (HTTPS
when given a certificate), on 127.0.0.1 and a free port:

* ``kfp.Client(host="http://127.0.0.1:PORT")`` keeps the scheme it is given.
* The Vertex AI clients (google-cloud-aiplatform) speak gRPC by default; with
  ``api_transport="rest"`` the generated REST transport keeps an ``http://``
  scheme written into ``api_endpoint`` (it only prepends its ``url_scheme``,
  "https", to an endpoint without one), so no transport option is needed.
  Credentials are real too: an ``authorized_user`` file whose ``token_uri`` is
  this server's ``/token``, so google-auth refreshes a bearer token here and
  the stand-in sees it on every call.

Fixtures: ``kfp_api`` and ``vertex_api`` (function scope) yield a running
:class:`RecordingAPI`; ``vertex_credentials`` writes the credentials file and
points GOOGLE_APPLICATION_CREDENTIALS at it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

LOOPBACK = "127.0.0.1"
ACCESS_TOKEN = "stand-in-access-token"


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict | None


# method, path regex, and the answer: a JSON object, or (HTTP status, JSON object) for an error
Route = tuple[str, str, Callable[[Request, re.Match], dict | tuple[int, dict]]]


class RecordingAPI:
    """A threaded loopback HTTP server answering JSON from ``routes`` (the
    first that matches) and recording every request; an unknown route is
    answered 404 (and recorded)."""

    def __init__(self, routes: list[Route], *, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS with, as an in-cluster API does."""
        self.requests: list[Request] = []
        self._routes = [(method, re.compile(pattern + r"\Z"), answer) for method, pattern, answer in routes]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type", "")
                if raw and "json" in content_type:
                    body = json.loads(raw)
                elif raw:
                    body = {key: values[0] for key, values in parse_qs(raw.decode()).items()}  # a form
                else:
                    body = None
                request = Request(self.command, url.path, parse_qs(url.query),
                                  {key.lower(): value for key, value in self.headers.items()}, body)
                api.requests.append(request)
                status, answer = 404, {"error": {"code": 404, "message": f"no stand-in for {self.command} {url.path}"}}
                for method, pattern, respond in api._routes:
                    match = pattern.match(url.path)
                    if method == self.command and match:
                        answer = respond(request, match)
                        status, answer = answer if isinstance(answer, tuple) else (200, answer)
                        break
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> RecordingAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sent(self, method: str, pattern: str) -> list[Request]:
        """The requests of one kind, in order."""
        regex = re.compile(pattern + r"\Z")
        return [request for request in self.requests if request.method == method and regex.match(request.path)]


# --------------------------------------------------------------------------- Kubeflow Pipelines


def kubeflow_routes(tag_name: str = "2.5.0") -> list[Route]:
    """The KFP v2beta1 API as kfp.Client's submit and recurring-run calls use it; its health check
    answers as the API server's own handler writes it (release ``tag_name``; 2.4-2.15 say "unknown")."""
    ids = itertools.count(1)

    def experiment(request: Request, _match) -> dict:
        return {**request.body, "experiment_id": f"experiment-{next(ids)}"}

    return [
        ("GET", "/apis/v2beta1/healthz",
         lambda request, match: {"commit_sha": "unknown", "tag_name": tag_name, "multi_user": False}),
        ("GET", "/apis/v2beta1/experiments", lambda request, match: {}),  # none yet: the client creates it
        ("POST", "/apis/v2beta1/experiments", experiment),
        ("POST", "/apis/v2beta1/runs",
         lambda request, match: {**request.body, "run_id": f"run-{next(ids)}", "state": "PENDING"}),
        ("POST", "/apis/v2beta1/recurringruns",
         lambda request, match: {**request.body, "recurring_run_id": f"recurring-{next(ids)}", "status": "ENABLED"}),
    ]


@pytest.fixture
def kfp_api() -> Iterator[RecordingAPI]:
    with RecordingAPI(kubeflow_routes()) as api:
        yield api


# --------------------------------------------------------------------------- Vertex AI

VERTEX_PARENT = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"


def vertex_routes() -> list[Route]:
    """OAuth token refresh, and the Vertex AI v1 pipelineJobs and schedules create calls."""
    ids = itertools.count(1)

    def pipeline_job(request: Request, match: re.Match) -> dict:
        job_id = request.query.get("pipelineJobId", [f"job-{next(ids)}"])[0]
        name = f"projects/{match['project']}/locations/{match['location']}/pipelineJobs/{job_id}"
        return {**request.body, "name": name, "state": "PIPELINE_STATE_PENDING"}

    def schedule(request: Request, match: re.Match) -> dict:
        name = f"projects/{match['project']}/locations/{match['location']}/schedules/{next(ids)}"
        return {**request.body, "name": name, "state": "ACTIVE"}

    return [
        ("POST", "/token", lambda request, match: {"access_token": ACCESS_TOKEN, "expires_in": 3600,
                                                   "token_type": "Bearer"}),
        ("POST", VERTEX_PARENT + "/pipelineJobs", pipeline_job),
        ("GET", VERTEX_PARENT + "/pipelineJobs", lambda request, match: {"pipelineJobs": []}),
        ("POST", VERTEX_PARENT + "/schedules", schedule),
    ]


@pytest.fixture
def vertex_api() -> Iterator[RecordingAPI]:
    with RecordingAPI(vertex_routes()) as api:
        yield api


@pytest.fixture
def vertex_credentials(vertex_api, tmp_path, monkeypatch) -> str:
    """Application default credentials that refresh their token at the stand-in."""
    path = tmp_path / "application_default_credentials.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "kic-test", "client_secret": "secret",
                                "refresh_token": "refresh", "token_uri": f"{vertex_api.endpoint}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return str(path)
