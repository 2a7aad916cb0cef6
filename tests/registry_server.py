"""Real container registries on loopback, and a tiny image to push into them, for tests.

The registry is the CNCF distribution server that Docker Hub, GitLab and Harbor grew from (Debian's
``docker-registry`` package: ``docker-registry serve CONFIG.yml``); images are pushed with ``skopeo``.
Both run as processes of their own. ``apt-get install docker-registry skopeo apache2-utils`` installs
them (apache2-utils for ``htpasswd``, which writes the bcrypt password file the registry reads).

* :func:`serve_registry` runs one registry: open to all, behind HTTP Basic (``htpasswd_auth``), or
  behind a token service (``TokenService.auth_config``), until the ``with`` block ends.
* :class:`TokenService` is the other half of Docker's token auth, the part ghcr.io, Docker Hub and
  Artifact Registry run at their realm: it trades a password, an OAuth2 refresh token or nothing for a
  signed JWT that the registry checks against the service's certificate.
* :func:`write_oci_image` writes a one-layer image as an OCI layout folder and :func:`push` copies it
  into a registry, returning its manifest digest.
* :func:`require_tools` skips the calling test when the binaries are absent, or fails it when
  ``KIC_REQUIRE_REGISTRY=1`` says they must be there (as CI does).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

LOOPBACK = "127.0.0.1"
REQUIRE_ENV = "KIC_REQUIRE_REGISTRY"
REGISTRY_BINARY = "docker-registry"
_STARTUP_SECONDS = 15
_PORT_TRIES = 3


def missing_tools() -> list[str]:
    missing = [name for name in (REGISTRY_BINARY, "skopeo") if shutil.which(name) is None]
    if shutil.which("htpasswd") is None and not _bcrypt_importable():
        missing.append("htpasswd (or the bcrypt module)")
    return missing


def require_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    reason = (f"needs {', '.join(missing)} for a real registry on loopback "
              f"(apt-get install docker-registry skopeo apache2-utils)")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the registry tests cannot run: {reason}")
    pytest.skip(reason)


def _bcrypt_importable() -> bool:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return False
    return True


# --- the registry -----------------------------------------------------------------------------------------


class Registry:
    """One running registry: ``host`` is ``127.0.0.1:PORT``, as an image reference names it."""

    def __init__(self, host: str, log_path: Path) -> None:
        self.host = host
        self.log_path = log_path

    def image(self, repository: str, reference: str) -> str:
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{separator}{reference}"


def htpasswd_auth(workdir: Path, users: Mapping[str, str]) -> dict[str, Any]:
    """The ``auth`` section of a registry behind HTTP Basic, with a bcrypt password file for ``users``."""
    path = workdir / "htpasswd"
    path.write_text("".join(_htpasswd_line(user, password) + "\n" for user, password in users.items()))
    return {"htpasswd": {"realm": "kic-test", "path": str(path)}}


def _htpasswd_line(user: str, password: str) -> str:
    # The registry reads bcrypt only; htpasswd's default (MD5) lines are refused at login.
    if shutil.which("htpasswd"):
        answer = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
        return answer.stdout.strip()
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}"


@contextlib.contextmanager
def serve_registry(workdir: Path, auth: Mapping[str, Any] | None = None) -> Iterator[Registry]:
    """A registry storing under ``workdir``, on a free loopback port, stopped when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(_PORT_TRIES):
        port = _free_port()  # another process may take it before the registry binds; then try another
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(_registry_config(workdir, port, auth)))
        log_path = workdir / "registry.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config_path)], stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            if _wait_until_answering(process, port):
                yield Registry(f"{LOOPBACK}:{port}", log_path)
                return
        finally:
            _stop(process)
    raise RuntimeError(f"the registry did not start in {_PORT_TRIES} tries; its log:\n{log_path.read_text()}")


def _registry_config(workdir: Path, port: int, auth: Mapping[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = dict(auth)
    return config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_until_answering(process: subprocess.Popen, port: int) -> bool:
    """True once ``GET /v2/`` answers at all (401 too: then auth is on); False if the registry exited."""
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
        try:
            connection.request("GET", "/v2/")
            connection.getresponse().read()
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            connection.close()
    raise RuntimeError(f"the registry on port {port} did not answer within {_STARTUP_SECONDS} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the image --------------------------------------------------------------------------------------------


def write_oci_image(layout: Path, tag: str) -> None:
    """A one-file, one-layer linux/amd64 image as an OCI image layout folder (``oci:LAYOUT:TAG`` to skopeo)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = _layer_tar({"kic-test.txt": b"an image for kic's registry tests\n"})
    layer = gzip.compress(tar, mtime=0)
    config = _json_bytes({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    })
    manifest = _json_bytes({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    })
    for blob in (layer, config, manifest):
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    index_entry = {**_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
                   "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_bytes(_json_bytes({"schemaVersion": 2, "manifests": [index_entry]}))
    (layout / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))


def _layer_tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}", "size": len(blob)}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def push(layout: Path, tag: str, destination: str, credentials: tuple[str, str] | None = None) -> str:
    """Copies ``oci:LAYOUT:TAG`` to ``docker://DESTINATION`` (plain HTTP) and returns the manifest's digest."""
    digest_file = layout.parent / f"{layout.name}-{uuid.uuid4().hex}.digest"
    login = ["--dest-creds", ":".join(credentials)] if credentials else ["--dest-no-creds"]
    command = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", *login,
               "--digestfile", str(digest_file), f"oci:{layout}:{tag}", f"docker://{destination}"]
    # skopeo would read the user's own ~/.docker and containers auth files; a registry test must not.
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(layout.parent / "no-auth.json"),
           "DOCKER_CONFIG": str(layout.parent / "no-docker-config")}
    answer = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    if answer.returncode != 0:
        raise RuntimeError(f"skopeo copy to {destination} failed: {answer.stderr.strip()}")
    return digest_file.read_text().strip()


# --- the token service ------------------------------------------------------------------------------------


class TokenService(ThreadingHTTPServer):
    """Docker's token auth, the realm side: ``GET /token?service=&scope=`` with a password (HTTP Basic)
    or none, or ``POST /token`` with an OAuth2 refresh token, answers a JWT granting the scope's
    actions: all of them to a known user, pull of ``public/...`` repositories to anyone. A wrong password
    or refresh token gets 401, as at auth.docker.io.
    """

    daemon_threads = True
    service = "kic-test-registry"
    issuer = "kic-test-token-service"
    public_prefix = "public/"

    def __init__(self, workdir: Path, users: Mapping[str, str], refresh_tokens: Mapping[str, str]) -> None:
        super().__init__((LOOPBACK, 0), _TokenHandler)
        self.users = dict(users)
        self.refresh_tokens = dict(refresh_tokens)  # token -> the user it logs in
        self.realm = f"http://{LOOPBACK}:{self.server_address[1]}/token"
        self._key, certificate = _signing_key_and_certificate()
        self._certificate_der = certificate.public_bytes(_serialization().Encoding.DER)
        self.certificate_path = workdir / "token-service.pem"
        workdir.mkdir(parents=True, exist_ok=True)
        self.certificate_path.write_bytes(certificate.public_bytes(_serialization().Encoding.PEM))
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def auth_config(self) -> dict[str, Any]:
        """The ``auth`` section of a registry that trusts this service's tokens."""
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.certificate_path)}}

    def __enter__(self) -> TokenService:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()

    def grant(self, user: str, scopes: list[str]) -> str:
        access = [entry for entry in (self._allowed(user, scope) for scope in scopes) if entry]
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "iat": now, "nbf": now - 60,
                  "exp": now + 600, "jti": uuid.uuid4().hex, "access": access}
        return self._sign(claims)

    def _allowed(self, user: str, scope: str) -> dict[str, Any] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        granted = actions.split(",") if user else (["pull"] if name.startswith(self.public_prefix) else [])
        return {"type": kind, "name": name, "actions": granted}

    def _sign(self, claims: dict[str, Any]) -> str:
        # RS256 with the certificate in x5c: the registry checks the chain against its rootcertbundle.
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._certificate_der).decode()]}
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}".encode()
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url(signature)}"


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenService

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user = self._basic_user()
        if user is None:
            self._answer(401, {"details": "incorrect username or password"})
            return
        self._answer_token(user, query.get("scope", []))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = urllib.parse.parse_qs(body)
        user = self.server.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if form.get("grant_type") != ["refresh_token"] or user is None:
            self._answer(401, {"error": "invalid_grant"})
            return
        self._answer_token(user, " ".join(form.get("scope", [])).split())

    def _basic_user(self) -> str | None:
        """The user a Basic header logs in ("" for none), or None for a wrong password."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return ""
        user, _, password = base64.b64decode(header[len("Basic "):]).decode().partition(":")
        return user if self.server.users.get(user) == password else None

    def _answer_token(self, user: str, scopes: list[str]) -> None:
        token = self.server.grant(user, scopes)
        issued = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self._answer(200, {"token": token, "access_token": token, "expires_in": 600, "issued_at": issued})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        body = _json_bytes(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def _signing_key_and_certificate():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TokenService.issuer)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
