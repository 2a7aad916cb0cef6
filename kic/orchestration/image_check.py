"""Can every container image a pipeline names be pulled? Asked of the registries before a run is sent.

A pipeline whose image is missing, or private without a pull secret, only fails on the cluster, minutes
later, as an ImagePullBackOff that names no cause. Asking each registry for the image's manifest (the
Docker Registry HTTP API v2, which the OCI distribution spec standardised) takes a second and names it.

The registry is asked as ``docker pull`` would ask it, with the same credentials: those in Docker's
config.json, its ``credHelpers`` and its ``credsStore``. The cluster pulls with its own (a pull secret,
a node's service account), so a private image that this machine can read may still fail there; an image
that is missing fails everywhere.

Nothing here knows KFP beyond :func:`images_in_pipeline`, which reads a compiled pipeline's IR.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import requests

from kic.errors import UnreachableError, UserError

# The manifest kinds a pull accepts: an index or list picks a platform's manifest, which is one of the
# others. A registry answers 404 for a manifest in none of the kinds asked for.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "docker.io"
# Docker Hub's API lives on another host than its name, and Docker files its credentials under the v1 URL.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_CREDENTIALS_KEY = "https://index.docker.io/v1/"
# How a credential helper says that it holds a token to trade (OAuth2 refresh token) rather than a password.
IDENTITY_TOKEN_USERNAME = "<token>"
_CREDENTIALS_NOT_FOUND = "credentials not found"
_MAX_CHECKS_AT_ONCE = 8

# The grammar of github.com/distribution/reference, the one that docker, containerd and Kubernetes parse.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
# One auth-param of a WWW-Authenticate challenge: key="quoted, maybe with commas" or key=token.
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclasses.dataclass(frozen=True)
class ImageStatus:
    """What a registry said about one image.

    ``found`` is True when the manifest exists, False when the registry says it does not or refuses it,
    and None when the registry could not be asked (network, timeout, an unknown way to log in).
    ``detail`` is one line for a person; it never holds a password or token.
    """

    reference: str
    found: bool | None
    detail: str


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """A parsed image reference, normalised as Docker does (``python`` is docker.io/library/python:latest)."""

    registry: str  # as written, e.g. ghcr.io, localhost:5000, docker.io
    repository: str  # e.g. kic-project/kic-cpu, library/python
    tag: str  # "latest" when neither a tag nor a digest was given
    digest: str = ""  # sha256:..., which a pull prefers to the tag when both are given

    @property
    def manifest_reference(self) -> str:
        return self.digest or self.tag

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def credentials_key(self) -> str:
        """The key Docker files this registry's credentials under, in config.json and for its helpers."""
        return DOCKER_HUB_CREDENTIALS_KEY if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(_hostname(self.registry))

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_reference(reference: str) -> ImageReference:
    """``host[:port]/path[:tag][@digest]``, where a first component is a host only if it looks like one.

    Raises UserError for a reference that no container runtime would accept.
    """
    remainder, at, digest = reference.partition("@")
    first, slash, rest = remainder.partition("/")
    if slash and _looks_like_host(first):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, remainder
    repository, tag = _split_tag(path)
    if registry in ("index.docker.io", DOCKER_HUB_API_HOST):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    problem = _reference_problem(registry, repository, tag, digest if at else None)
    if problem:
        raise UserError(f"{reference!r} is not a valid image reference: {problem}")
    return ImageReference(registry=registry, repository=repository, tag=tag or "latest", digest=digest)


def _looks_like_host(component: str) -> bool:
    # Docker's rule; it keeps "kic/train" on Docker Hub and sends "gcr.io/x" and "localhost/x" elsewhere.
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def _split_tag(path: str) -> tuple[str, str | None]:
    head, colon, tail = path.rpartition(":")
    if colon and "/" not in tail:
        return head, tail
    return path, None


def _reference_problem(registry: str, repository: str, tag: str | None, digest: str | None) -> str:
    if not _DOMAIN.fullmatch(registry):
        return f"{registry!r} is not a registry host"
    if not repository or not all(_PATH_COMPONENT.fullmatch(part) for part in repository.split("/")):
        return f"{repository!r} is not a repository name (lower-case letters, digits and . _ - between /)"
    if tag is not None and not _TAG.fullmatch(tag):
        return f"{tag!r} is not a tag"
    if digest is not None and not _DIGEST.fullmatch(digest):
        return f"{digest!r} is not a digest (sha256:<64 hex digits>)"
    return ""


def _hostname(registry: str) -> str:
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.rpartition(":")[0] if ":" in registry else registry


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# --- credentials ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Credentials:
    username: str
    secret: str = dataclasses.field(repr=False)
    source: str  # where they came from, for messages: a config file or a helper

    @property
    def is_identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USERNAME


@dataclasses.dataclass(frozen=True)
class _CredentialLookup:
    credentials: _Credentials | None
    looked_in: str  # e.g. "~/.docker/config.json", "docker-credential-gcloud", for "none for HOST in ..."


def docker_config_path(docker_config: str | None = None) -> str:
    """Where Docker reads its config.json: the given folder, else $DOCKER_CONFIG, else ~/.docker."""
    folder = docker_config or os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(folder, "config.json")


def _find_credentials(image: ImageReference, docker_config: str | None, timeout: float) -> _CredentialLookup:
    """The credentials Docker would use for ``image``'s registry, in Docker's order: a helper named for
    the registry, else the default store's helper, else config.json's own ``auths``.

    Raises UnreachableError when a helper is named but cannot be run.
    """
    path = docker_config_path(docker_config)
    config = _read_config(path)
    key = image.credentials_key
    helper = (config.get("credHelpers") or {}).get(key) or config.get("credsStore")
    if helper:
        return _CredentialLookup(_ask_helper(helper, key, path, timeout), f"docker-credential-{helper}")
    return _CredentialLookup(_credentials_in_auths(config.get("auths") or {}, key, path), _shown_path(path))


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise UnreachableError(f"{_shown_path(path)} cannot be read as JSON: {type(error).__name__}") from None
    return config if isinstance(config, dict) else {}


def _credentials_in_auths(auths: dict[str, Any], key: str, path: str) -> _Credentials | None:
    # Docker tries the key as written, then any key with the same host ("https://ghcr.io" for "ghcr.io").
    entry = auths.get(key)
    if entry is None:
        entry = next((value for name, value in auths.items() if _host_of_key(name) == _host_of_key(key)), None)
    if not isinstance(entry, dict):
        return None
    source = _shown_path(path)
    if entry.get("identitytoken"):
        return _Credentials(IDENTITY_TOKEN_USERNAME, entry["identitytoken"], source)
    if entry.get("auth"):
        username, _, password = _decode_basic(entry["auth"], path).partition(":")
        return _Credentials(username, password, source)
    if entry.get("username") and entry.get("password"):
        return _Credentials(entry["username"], entry["password"], source)
    return None


def _host_of_key(key: str) -> str:
    return key.removeprefix("https://").removeprefix("http://").partition("/")[0]


def _decode_basic(encoded: str, path: str) -> str:
    try:
        return base64.b64decode(encoded).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise UnreachableError(f"an auths entry in {_shown_path(path)} is not base64 of user:password") from None


def _ask_helper(helper: str, server: str, path: str, timeout: float) -> _Credentials | None:
    """Runs Docker's credential-helper protocol: ``docker-credential-NAME get``, the server on stdin, JSON out."""
    program = f"docker-credential-{helper}"
    try:
        answer = subprocess.run([program, "get"], input=server, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UnreachableError(f"{program}, named in {_shown_path(path)}, is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UnreachableError(f"{program} gave no credentials within {timeout:g} s") from None
    if answer.returncode != 0:
        if _CREDENTIALS_NOT_FOUND in (answer.stdout + answer.stderr).lower():
            return None
        raise UnreachableError(f"{program} get failed (exit {answer.returncode}){_last_line(answer.stderr)}")
    try:
        reply = json.loads(answer.stdout)
        username, secret = reply["Username"], reply["Secret"]
    except (ValueError, KeyError, TypeError):
        raise UnreachableError(f"{program} get did not answer the JSON of Docker's helper protocol") from None
    return _Credentials(username, secret, program) if secret else None


def _last_line(text: str) -> str:
    # A helper's own words say why (no account logged in, an expired session); it prints no secret on failure.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {lines[-1][:200]}" if lines else ""


def _shown_path(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home not in ("", "/") and path.startswith(home + os.sep) else path


# --- the registry's API -----------------------------------------------------------------------------------


class _Unanswered(Exception):
    """The registry or its token service gave no usable answer; the message is the status's detail."""


@dataclasses.dataclass(frozen=True)
class _Challenge:
    scheme: str  # lower case: "bearer", "basic", or whatever else the registry asked for
    params: dict[str, str]


def _parse_challenge(header: str) -> _Challenge:
    scheme, _, rest = header.strip().partition(" ")
    params = {match[1].lower(): match[3] if match[2] is None else match[2] for match in _CHALLENGE_PARAM.finditer(rest)}
    return _Challenge(scheme.lower(), params)


class _Registry:
    """The manifest endpoint of one image's registry, and the token service it names."""

    def __init__(self, image: ImageReference, timeout: float) -> None:
        self.image = image
        self.timeout = timeout
        scheme = "http" if image.is_loopback else "https"  # Docker's insecure-by-default loopback registries
        self.manifest_url = f"{scheme}://{image.api_host}/v2/{image.repository}/manifests/{image.manifest_reference}"
        self.session = requests.Session()
        # Without the environment, requests would add ~/.netrc's login over our Authorization header.
        self.session.trust_env = False
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.headers["User-Agent"] = "kic-image-check"

    def manifest(self, *, bearer: str = "", basic: tuple[str, str] | None = None) -> requests.Response:
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        response = self._send("HEAD", self.manifest_url, headers=headers, auth=basic)
        if response.status_code == 405:  # a registry without HEAD; the manifest is small
            response = self._send("GET", self.manifest_url, headers=headers, auth=basic)
        return response

    def token(self, challenge: _Challenge, credentials: _Credentials | None) -> str:
        """A bearer token from the challenge's realm; empty when the token service refuses to give one."""
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise _Unanswered(f"{self.image.registry} names no usable token service (realm {realm!r})")
        if credentials and realm.startswith("http://") and not _is_loopback(_url_hostname(realm)):
            raise _Unanswered(f"{self.image.registry} asks for credentials over plain HTTP ({realm}); kic sends none")
        query = {"scope": challenge.params.get("scope") or f"repository:{self.image.repository}:pull"}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        if credentials and credentials.is_identity_token:
            form = {**query, "grant_type": "refresh_token", "refresh_token": credentials.secret, "client_id": "kic"}
            response = self._send("POST", realm, data=form)
        else:
            basic = (credentials.username, credentials.secret) if credentials else None
            response = self._send("GET", realm, params=query, auth=basic)
        if response.status_code in (401, 403):
            return ""
        if response.status_code != 200:
            raise _Unanswered(f"the token service of {self.image.registry} answered HTTP {response.status_code}")
        try:
            payload = response.json()
            return payload.get("token") or payload["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise _Unanswered(f"the token service of {self.image.registry} answered no token") from None

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        proxies = {} if _is_loopback(_url_hostname(url)) else requests.utils.get_environ_proxies(url)
        response = self.session.request(method, url, timeout=self.timeout, proxies=proxies, **kwargs)
        response.close()
        return response


def _url_hostname(url: str) -> str:
    return requests.utils.urlparse(url).hostname or ""


# --- the check --------------------------------------------------------------------------------------------


def check_image(reference: str, *, docker_config: str | None = None, timeout: float = 10.0) -> ImageStatus:
    """Asks the image's registry whether its manifest exists, logging in as Docker would when asked to.

    ``docker_config`` is the folder of Docker's config.json; ``timeout`` bounds each request and helper.
    """
    try:
        image = parse_reference(reference)
    except UserError as error:
        return ImageStatus(reference, False, str(error))
    registry = _Registry(image, timeout)
    try:
        return ImageStatus(reference, *_ask(registry, docker_config))
    except _Unanswered as error:
        return ImageStatus(reference, None, str(error))
    except UnreachableError as error:
        return ImageStatus(reference, None, f"cannot read credentials for {image.registry}: {error}")
    except requests.RequestException as error:
        host = _failed_host(error, image)
        return ImageStatus(reference, None, f"{host} could not be reached: {_why(error, timeout)}")
    finally:
        registry.session.close()


def check_images(references: Iterable[str], **options: Any) -> list[ImageStatus]:
    """:func:`check_image` for each distinct reference, in their order, a few registries asked at once."""
    distinct = list(dict.fromkeys(references))
    if not distinct:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(_MAX_CHECKS_AT_ONCE, len(distinct))) as pool:
        return list(pool.map(lambda reference: check_image(reference, **options), distinct))


def _ask(registry: _Registry, docker_config: str | None) -> tuple[bool | None, str]:
    response = registry.manifest()
    if response.status_code != 401:
        return _verdict(registry.image, response, None)
    challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
    if challenge.scheme == "bearer":
        return _ask_with_token(registry, challenge, docker_config)
    if challenge.scheme == "basic":
        return _ask_with_password(registry, docker_config)
    shown = challenge.scheme or "none named"
    return None, f"{registry.image.registry} asks for a login kic cannot do (WWW-Authenticate scheme: {shown})"


def _ask_with_token(registry: _Registry, challenge: _Challenge, docker_config: str | None) -> tuple[bool | None, str]:
    # Anonymously first: a public image needs no credentials, and the cluster will likely have none.
    anonymous_token = registry.token(challenge, None)
    anonymous = registry.manifest(bearer=anonymous_token) if anonymous_token else None
    if anonymous is not None and anonymous.status_code not in (401, 403, 404):
        return _verdict(registry.image, anonymous, None)
    try:
        lookup = _find_credentials(registry.image, docker_config, registry.timeout)
    except UnreachableError as error:
        if anonymous is not None and anonymous.status_code == 404:
            found, detail = _verdict(registry.image, anonymous, None)
            return found, f"{detail} (asked anonymously: {error})"
        raise
    if lookup.credentials is None:
        if anonymous is not None:
            return _verdict(registry.image, anonymous, None, lookup)
        return False, _needs_credentials(registry.image, lookup)
    token = registry.token(challenge, lookup.credentials)
    if not token:
        return False, f"access denied: {registry.image.registry} refused the credentials from {lookup.looked_in}"
    return _verdict(registry.image, registry.manifest(bearer=token), lookup.credentials)


def _ask_with_password(registry: _Registry, docker_config: str | None) -> tuple[bool | None, str]:
    lookup = _find_credentials(registry.image, docker_config, registry.timeout)
    if lookup.credentials is None:
        return False, _needs_credentials(registry.image, lookup)
    basic = (lookup.credentials.username, lookup.credentials.secret)
    return _verdict(registry.image, registry.manifest(basic=basic), lookup.credentials)


def _verdict(image: ImageReference, response: requests.Response, credentials: _Credentials | None,
             lookup: _CredentialLookup | None = None) -> tuple[bool | None, str]:
    status = response.status_code
    if 200 <= status < 300:
        digest = response.headers.get("Docker-Content-Digest", "")
        return True, f"present ({digest})" if digest else "present"
    if status == 404:
        return False, f"not found in {image.registry}: no such repository or tag ({image.repository}:" \
                      f"{image.manifest_reference})"
    if status in (401, 403):
        if credentials is not None:
            return False, f"access denied (HTTP {status}) with the credentials from {credentials.source}"
        if lookup is not None:
            return False, _needs_credentials(image, lookup)
        return False, f"access denied (HTTP {status}) without credentials"
    if status == 429:
        return None, f"{image.registry} refused to answer now: too many requests (HTTP 429)"
    return None, f"{image.registry} answered HTTP {status}"


def _needs_credentials(image: ImageReference, lookup: _CredentialLookup) -> str:
    # Registries refuse an unknown repository as they refuse a private one, so as not to tell which exists.
    return (f"needs credentials: none for {image.credentials_key} in {lookup.looked_in} "
            f"(or {image.repository} does not exist; without credentials the registry does not say)")


def _failed_host(error: requests.RequestException, image: ImageReference) -> str:
    # The token service may live elsewhere than the registry (auth.docker.io); name the one that failed.
    url = getattr(error.request, "url", None) or ""
    return requests.utils.urlparse(url).netloc or image.registry


def _why(error: requests.RequestException, timeout: float) -> str:
    if isinstance(error, requests.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(error, requests.exceptions.SSLError):
        return "its TLS certificate is not trusted here"
    # requests' messages nest the cause deep; the OS's reason ("[Errno 111] Connection refused") is the point.
    reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    return reason[1].strip() if reason else type(error).__name__


# --- the images a compiled pipeline runs ------------------------------------------------------------------

# Keys that hold an image inside a launcher's payload: a Vertex CustomJob's worker pool spec, a
# Model's containerSpec.
_IMAGE_KEYS = ("image_uri", "imageUri")


def images_in_pipeline(spec: Mapping[str, Any]) -> list[str]:
    """Every image a compiled KFP pipeline (its IR, as loaded from YAML) runs, each once, executors' images first.

    Besides each executor's ``container.image``, a Vertex launcher (GCPC's CustomJob) runs images named
    only in its payload: a worker pool spec's ``container_spec.image_uri``, given as a parameter's default,
    a task's constant input, or JSON in the executor's arguments. Images given by a placeholder are
    only known when the run starts, and are left out.
    """
    images = [*_executor_images(spec), *_nested_images(spec)]
    return list(dict.fromkeys(image for image in images if _is_literal(image)))


def _executor_images(document: Mapping[str, Any]) -> Iterator[str]:
    executors = (document.get("deploymentSpec") or {}).get("executors") or {}
    for executor in executors.values():
        image = ((executor or {}).get("container") or {}).get("image")
        if isinstance(image, str):
            yield image


def _nested_images(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in _IMAGE_KEYS and isinstance(item, str):
                yield item
            else:
                yield from _nested_images(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nested_images(item)
    elif isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            yield from _nested_images(json.loads(value))
        except ValueError:  # a payload with placeholders in it is not JSON until the run fills them in
            return


def _is_literal(image: str) -> bool:
    return bool(image) and "{{" not in image and not any(character.isspace() for character in image)
