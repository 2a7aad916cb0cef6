"""kic.orchestration.image_check against real registries on loopback (tests/registry_server.py): one open
to all, one behind HTTP Basic, one behind a token service, each holding an image pushed by skopeo."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import registry_server
from registry_server import Registry

from kic.errors import UserError
from kic.orchestration.image_check import (
    ImageReference,
    ImageStatus,
    check_image,
    check_images,
    images_in_pipeline,
    parse_reference,
)
from kic.orchestration.preflight import load_spec

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "kic/test"
PUBLIC_REPOSITORY = "public/test"  # pullable without credentials from the token registry
TAG = "1.0"
USER = "kic-pusher"
HELPER = "kictest"  # docker-credential-kictest, written per test


@dataclasses.dataclass(frozen=True)
class Registries:
    open: Registry
    basic: Registry  # HTTP Basic against an htpasswd file
    token: Registry  # Bearer tokens from registry_server.TokenService
    digest: str  # of the image pushed to each, as skopeo reported it
    password: str = dataclasses.field(repr=False)
    refresh_token: str = dataclasses.field(repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.password, self.refresh_token, _basic_auth(USER, self.password)


@pytest.fixture(scope="session")
def registries(tmp_path_factory) -> Iterator[Registries]:
    registry_server.require_tools()
    work = tmp_path_factory.mktemp("registries")
    layout = work / "image"
    registry_server.write_oci_image(layout, TAG)
    password, refresh_token = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
    users = {USER: password}
    with (
        registry_server.serve_registry(work / "open") as open_registry,
        registry_server.serve_registry(work / "basic", registry_server.htpasswd_auth(work, users)) as basic,
        registry_server.TokenService(work / "token-service", users, {refresh_token: USER}) as token_service,
        registry_server.serve_registry(work / "token", token_service.auth_config()) as token,
    ):
        login = (USER, password)
        digests = {
            registry_server.push(layout, TAG, open_registry.image(REPOSITORY, TAG)),
            registry_server.push(layout, TAG, basic.image(REPOSITORY, TAG), login),
            registry_server.push(layout, TAG, token.image(REPOSITORY, TAG), login),
            registry_server.push(layout, TAG, token.image(PUBLIC_REPOSITORY, TAG), login),
        }
        assert len(digests) == 1, digests
        yield Registries(open_registry, basic, token, digests.pop(), password, refresh_token)


@pytest.fixture(autouse=True)
def no_user_docker_config(tmp_path, monkeypatch):
    """Never this machine's own ~/.docker/config.json, nor a proxy between the tests and loopback."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)


def _basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _docker_config(folder: Path, config: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _auths(folder: Path, key: str, user: str, password: str) -> str:
    return _docker_config(folder, {"auths": {key: {"auth": _basic_auth(user, password)}}})


def _credential_helper(bin_dir: Path, monkeypatch, answers: dict[str, tuple[str, str]]) -> None:
    """docker-credential-kictest on PATH, answering ``get`` for each server in ``answers`` as Docker's
    helpers do, and "credentials not found" for any other."""
    cases = "".join(
        f"  '{server}') printf '%s' '{json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret})}' ;;\n"
        for server, (user, secret) in answers.items()
    )
    script = bin_dir / f"docker-credential-{HELPER}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script.write_text(
        '#!/bin/sh\n[ "$1" = get ] || exit 1\nserver=$(cat)\ncase "$server" in\n'
        f'{cases}  *) echo "credentials not found in native keychain"; exit 1 ;;\nesac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _assert_keeps_secrets(status: ImageStatus, registries: Registries) -> None:
    for secret in registries.secrets:
        assert secret not in status.detail
        assert secret not in repr(status)


# --- reference parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("python:3.11", ImageReference("docker.io", "library/python", "3.11")),
        ("python", ImageReference("docker.io", "library/python", "latest")),
        ("kic/train", ImageReference("docker.io", "kic/train", "latest")),
        ("index.docker.io/kic/train:2", ImageReference("docker.io", "kic/train", "2")),
        ("ghcr.io/kic-project/kic-cpu:0.1.0", ImageReference("ghcr.io", "kic-project/kic-cpu", "0.1.0")),
        ("localhost/kic", ImageReference("localhost", "kic", "latest")),
        ("registry.example.com:5000/a/b/c", ImageReference("registry.example.com:5000", "a/b/c", "latest")),
        ("127.0.0.1:5000/kic/test:1.0", ImageReference("127.0.0.1:5000", "kic/test", "1.0")),
        ("[::1]:5000/kic/test", ImageReference("[::1]:5000", "kic/test", "latest")),
        (f"gcr.io/p/i@sha256:{'a' * 64}", ImageReference("gcr.io", "p/i", "latest", f"sha256:{'a' * 64}")),
        (f"gcr.io/p/i:t@sha256:{'b' * 64}", ImageReference("gcr.io", "p/i", "t", f"sha256:{'b' * 64}")),
    ],
)
def test_parse_reference_normalises_as_docker_does(reference, expected):
    assert parse_reference(reference) == expected


def test_the_reference_asked_for_and_where_it_is_asked():
    hub = parse_reference("python:3.11")
    assert (hub.api_host, hub.credentials_key, hub.manifest_reference) == (
        "registry-1.docker.io", "https://index.docker.io/v1/", "3.11")
    pinned = parse_reference(f"gcr.io/p/i:t@sha256:{'b' * 64}")
    assert pinned.manifest_reference == f"sha256:{'b' * 64}"  # a pull takes the digest over the tag
    assert [parse_reference(name).is_loopback for name in ("localhost:5000/a", "127.0.0.5/a", "[::1]:5/a")] == [
        True, True, True]
    assert not parse_reference("registry.local:5000/a").is_loopback


@pytest.mark.parametrize("reference", ["", "Python:3", "ghcr.io/Kic/x", "ghcr.io/kic/x:", "x@sha256:12", "a b"])
def test_an_invalid_reference_is_refused_without_asking_anyone(reference):
    with pytest.raises(UserError, match="not a valid image reference"):
        parse_reference(reference)
    status = check_image(reference)
    assert status.found is False and "not a valid image reference" in status.detail


# --- an open registry -------------------------------------------------------------------------------------


def test_an_image_present_by_tag_is_found_with_its_digest(registries):
    status = check_image(registries.open.image(REPOSITORY, TAG))
    assert status == ImageStatus(registries.open.image(REPOSITORY, TAG), True, f"present ({registries.digest})")


def test_an_image_present_by_digest_is_found(registries):
    status = check_image(registries.open.image(REPOSITORY, registries.digest))
    assert status.found is True and registries.digest in status.detail


def test_a_missing_tag_is_not_found(registries):
    status = check_image(registries.open.image(REPOSITORY, "no-such-tag"))
    assert status.found is False
    assert status.detail == f"not found in {registries.open.host}: no such repository or tag ({REPOSITORY}:no-such-tag)"


def test_a_missing_digest_is_not_found(registries):
    status = check_image(registries.open.image(REPOSITORY, f"sha256:{'0' * 64}"))
    assert status.found is False and "not found" in status.detail


def test_a_missing_repository_is_not_found(registries):
    status = check_image(registries.open.image("kic/no-such-repository", TAG))
    assert status.found is False and "no such repository or tag" in status.detail


def test_check_images_asks_once_per_image_in_order(registries):
    present, missing = registries.open.image(REPOSITORY, TAG), registries.open.image(REPOSITORY, "missing")
    statuses = check_images([present, missing, present, missing])
    assert [(status.reference, status.found) for status in statuses] == [(present, True), (missing, False)]
    assert check_images([]) == []


# --- HTTP Basic -------------------------------------------------------------------------------------------


def test_basic_auth_without_credentials_says_they_are_needed(registries, tmp_path):
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=str(tmp_path / "empty"))
    assert status.found is False
    assert status.detail.startswith(f"needs credentials: none for {registries.basic.host} in ")
    _assert_keeps_secrets(status, registries)


@pytest.mark.parametrize("key_form", ["{host}", "https://{host}", "http://{host}/v2/"])
def test_basic_auth_with_credentials_in_auths_is_found(registries, tmp_path, key_form):
    key = key_form.format(host=registries.basic.host)
    config = _auths(tmp_path / "docker", key, USER, registries.password)
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is True, status.detail
    _assert_keeps_secrets(status, registries)


def test_docker_config_env_is_read_when_no_folder_is_given(registries, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", _auths(tmp_path / "docker", registries.basic.host, USER, registries.password))
    assert check_image(registries.basic.image(REPOSITORY, TAG)).found is True


def test_basic_auth_with_a_wrong_password_is_access_denied(registries, tmp_path):
    wrong = secrets.token_urlsafe(16)
    config = _auths(tmp_path / "docker", registries.basic.host, USER, wrong)
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is False
    assert "access denied (HTTP 401) with the credentials from" in status.detail
    assert wrong not in status.detail
    _assert_keeps_secrets(status, registries)


def test_basic_auth_with_a_credential_helper_is_found(registries, tmp_path, monkeypatch):
    _credential_helper(tmp_path / "bin", monkeypatch, {registries.basic.host: (USER, registries.password)})
    config = _docker_config(tmp_path / "docker", {"credHelpers": {registries.basic.host: HELPER}})
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is True, status.detail
    _assert_keeps_secrets(status, registries)


def test_a_helper_without_credentials_for_the_registry_says_so(registries, tmp_path, monkeypatch):
    _credential_helper(tmp_path / "bin", monkeypatch, {"elsewhere.example.com": (USER, registries.password)})
    config = _docker_config(tmp_path / "docker", {"credsStore": HELPER})
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is False
    expected = f"needs credentials: none for {registries.basic.host} in docker-credential-{HELPER}"
    assert status.detail.startswith(expected)


def test_a_helper_that_is_not_installed_cannot_check(registries, tmp_path):
    config = _docker_config(tmp_path / "docker", {"credsStore": "kic-not-installed"})
    status = check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is None
    assert "docker-credential-kic-not-installed" in status.detail and "not on PATH" in status.detail


def test_credential_helpers_take_precedence_over_auths_as_in_docker(registries, tmp_path, monkeypatch):
    _credential_helper(tmp_path / "bin", monkeypatch, {registries.basic.host: (USER, registries.password)})
    stale = {"auth": _basic_auth(USER, "stale")}
    config = _docker_config(tmp_path / "docker", {"auths": {registries.basic.host: stale},
                                                   "credHelpers": {registries.basic.host: HELPER}})
    assert check_image(registries.basic.image(REPOSITORY, TAG), docker_config=config).found is True


# --- a token service (as ghcr.io, Docker Hub, Artifact Registry) ------------------------------------------


def test_a_public_image_behind_a_token_service_needs_no_credentials(registries):
    status = check_image(registries.token.image(PUBLIC_REPOSITORY, TAG))
    assert status.found is True and registries.digest in status.detail


def test_a_private_image_behind_a_token_service_needs_credentials(registries):
    status = check_image(registries.token.image(REPOSITORY, TAG))
    assert status.found is False
    assert status.detail.startswith(f"needs credentials: none for {registries.token.host} in ")


def test_a_token_bought_with_a_password_finds_a_private_image(registries, tmp_path):
    config = _auths(tmp_path / "docker", registries.token.host, USER, registries.password)
    status = check_image(registries.token.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is True, status.detail
    _assert_keeps_secrets(status, registries)
    missing = check_image(registries.token.image(REPOSITORY, "no-such-tag"), docker_config=config)
    assert missing.found is False and "no such repository or tag" in missing.detail


def test_a_token_service_refusing_the_password_is_access_denied(registries, tmp_path):
    wrong = secrets.token_urlsafe(16)
    config = _auths(tmp_path / "docker", registries.token.host, USER, wrong)
    status = check_image(registries.token.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is False
    assert status.detail.startswith(f"access denied: {registries.token.host} refused the credentials from ")
    assert wrong not in status.detail
    _assert_keeps_secrets(status, registries)


def test_an_identity_token_from_a_helper_is_traded_for_an_access_token(registries, tmp_path, monkeypatch):
    _credential_helper(tmp_path / "bin", monkeypatch, {registries.token.host: ("<token>", registries.refresh_token)})
    config = _docker_config(tmp_path / "docker", {"credHelpers": {registries.token.host: HELPER}})
    status = check_image(registries.token.image(REPOSITORY, TAG), docker_config=config)
    assert status.found is True, status.detail
    _assert_keeps_secrets(status, registries)


def test_an_identity_token_in_auths_is_used(registries, tmp_path):
    config = _docker_config(tmp_path / "docker",
                            {"auths": {registries.token.host: {"identitytoken": registries.refresh_token}}})
    assert check_image(registries.token.image(REPOSITORY, TAG), docker_config=config).found is True


# --- no registry ------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nothing_listening_cannot_check_and_says_so_at_once():
    port = _closed_port()
    started = time.monotonic()
    status = check_image(f"127.0.0.1:{port}/kic/test:1.0", timeout=10)
    assert time.monotonic() - started < 2
    assert status.found is None
    assert status.detail == f"127.0.0.1:{port} could not be reached: Connection refused"


def test_a_registry_that_never_answers_cannot_check_within_the_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel does) but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        status = check_image(f"127.0.0.1:{port}/kic/test:1.0", timeout=0.3)
    assert time.monotonic() - started < 2
    assert status == ImageStatus(f"127.0.0.1:{port}/kic/test:1.0", None,
                                 f"127.0.0.1:{port} could not be reached: no answer within 0.3 s")


class _OddRegistry(ThreadingHTTPServer):
    """What the distribution server never does: refuse HEAD (405), or ask for a login kic cannot do."""

    daemon_threads = True

    def __init__(self, challenge: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _OddRegistryHandler)
        self.challenge = challenge
        self.methods: list[str] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"


class _OddRegistryHandler(BaseHTTPRequestHandler):
    server: _OddRegistry

    def do_HEAD(self) -> None:
        self.server.methods.append("HEAD")
        self._answer(401 if self.server.challenge else 405)

    def do_GET(self) -> None:
        self.server.methods.append("GET")
        self._answer(200, b'{"schemaVersion": 2}')

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        if self.server.challenge:
            self.send_header("WWW-Authenticate", self.server.challenge)
        self.send_header("Docker-Content-Digest", f"sha256:{'c' * 64}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _odd_registry(challenge: str = "") -> Iterator[_OddRegistry]:
    server = _OddRegistry(challenge)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_without_head_is_asked_with_get():
    with _odd_registry() as registry:
        status = check_image(f"{registry.host}/kic/test:1.0")
    assert status.found is True and f"sha256:{'c' * 64}" in status.detail
    assert registry.methods == ["HEAD", "GET"]


def test_a_login_kic_cannot_do_cannot_check():
    with _odd_registry('Negotiate realm="corp"') as registry:
        status = check_image(f"{registry.host}/kic/test:1.0")
    assert status.found is None and "WWW-Authenticate scheme: negotiate" in status.detail


# --- the images a compiled pipeline runs ------------------------------------------------------------------


def _images_named_in(path: Path) -> set[str]:
    """Every literal ``image:`` or ``image_uri:`` value in the YAML's text: what the parser must find."""
    return set(re.findall(r"^\s*-?\s*(?:image|image_uri): ([^\s'{]+)$", path.read_text(), flags=re.MULTILINE))


def test_images_in_the_kubeflow_pipeline():
    images = images_in_pipeline(load_spec(str(ROOT / "pipeline.yaml")))
    assert set(images) == _images_named_in(ROOT / "pipeline.yaml")
    assert len(images) == len(set(images))
    assert any(image.startswith("ghcr.io/kic-project/kic-cpu:") for image in images)
    assert any(image.startswith("ghcr.io/kic-project/kic-gpu:") for image in images)


def test_images_in_the_vertex_pipeline_include_the_custom_jobs_train_image():
    images = images_in_pipeline(load_spec(str(ROOT / "pipeline-vertex.yaml")))
    assert set(images) == _images_named_in(ROOT / "pipeline-vertex.yaml")
    train_images = [image for image in images if image.startswith("ghcr.io/kic-project/kic-gpu:")]
    assert train_images, images  # named only inside the CustomJob's worker pool spec
    assert any(image.startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:") for image in images)


def test_images_in_json_payloads_and_defaults_but_not_placeholders(tmp_path):
    pools = [{"container_spec": {"image_uri": "example.com/pool:1"}, "replica_count": 1}]
    payload = json.dumps({"job_spec": {"worker_pool_specs": [{"container_spec": {"image_uri": "example.com/arg:1"}}]}})
    spec = {
        "root": {"inputDefinitions": {"parameters": {"worker_pool_specs": {"defaultValue": pools}}}},
        "deploymentSpec": {"executors": {
            "exec-a": {"container": {"image": "example.com/a:1", "args": ["--payload", payload]}},
            "exec-b": {"container": {"image": "{{$.inputs.parameters['image']}}",
                                     "args": ['{"image_uri": "{{$.inputs.parameters[\'x\']}}"}']}},
            "exec-c": {"container": {"image": "example.com/a:1"}},
        }},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec) + "\n---\n" + json.dumps({"platforms": {"kubernetes": {}}}))
    assert images_in_pipeline(load_spec(str(path))) == ["example.com/a:1", "example.com/pool:1", "example.com/arg:1"]
