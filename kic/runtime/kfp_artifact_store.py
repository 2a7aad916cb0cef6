"""Kubeflow Pipelines' own artifact store (MinIO; SeaweedFS from 2.16), found as
the KFP launcher in the same pod finds it, so that train can keep checkpoints
under a ``minio://`` pipeline root with nothing compiled in.

The launcher (backend/src/v2/config/env.go and objectstore/ in
kubeflow/pipelines, read at 2.0.5, 2.4.1, 2.14, 2.15 and 2.17) resolves a
``minio://`` root like this, and so does :func:`find`:

* the ``kfp-launcher`` ConfigMap of the pod's namespace may name the store in
  its ``providers`` entry (``minio.default``: endpoint, region, disableSSL and
  credentials, either ``fromEnv`` or a ``secretRef``; ``minio.overrides`` per
  bucket and key prefix), from KFP 2.1;
* otherwise the default: path-style, plain HTTP, region "minio", the keys
  ``accesskey`` and ``secretkey`` of the ``mlpipeline-minio-artifact`` Secret
  in the pod's namespace, and the endpoint of the release: the namespace's own
  ``minio-service`` (its ``MINIO_SERVICE_SERVICE_HOST``/``_PORT``) up to 2.14,
  else ``minio-service.kubeflow:9000``, which 2.16 changed to
  ``seaweedfs.kubeflow:9000``. Train cannot know the release, so it takes the
  first of the two that the cluster's DNS knows.

The launcher reads that Secret through the Kubernetes API with the pod's
service account (a standalone install's pipeline-runner Role grants ``get`` on
secrets and configmaps, manifests/kustomize/base/pipeline/pipeline-runner-role.yaml;
a profile's default-editor has its namespace's edit role); train runs in the
same pod with the same account, so it may read it too, on every 2.x release and without a secret mounted into the pod
(kfp-kubernetes' secret fields fail the step before 2.4.1, and a missing secret
leaves the pod waiting before 2.15; see kic.orchestration.kfp_backend).
Nothing here raises: what cannot be found is a sentence for train's log, and
train then runs without checkpoints, as before.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from kic import storage

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LAUNCHER_CONFIGMAP = "kfp-launcher"
DEFAULT_SECRET = "mlpipeline-minio-artifact"
DEFAULT_SECRET_KEYS = ("accesskey", "secretkey")
# The default endpoints, newest release first: SeaweedFS from 2.16, MinIO before.
DEFAULT_ENDPOINTS = ("seaweedfs.kubeflow:9000", "minio-service.kubeflow:9000")
DEFAULT_REGION = "minio"
API_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Found:
    """The store (empty keys: the AWS credential chain) and where its settings came from, for the log."""

    store: storage.S3Store
    source: str


class NotFound(Exception):
    """Why the store could not be found (a sentence for the log)."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.status = status  # the Kubernetes API's HTTP status, if it answered with one


def find(uri: str, *, environ: Mapping[str, str] | None = None, service_account_dir: str | None = None) -> Found:
    """The store that holds ``uri`` (``minio://BUCKET/KEY``), as the launcher of
    this pod would pick it; NotFound says why not."""
    environ = os.environ if environ is None else environ
    api = _KubernetesApi.in_pod(environ, service_account_dir or SERVICE_ACCOUNT_DIR)
    bucket, _, key = uri.removeprefix("minio://").partition("/")
    settings = _provider_settings(api, bucket, key)
    if settings is None:
        endpoint = _default_endpoint(environ)
        return Found(storage.S3Store(f"http://{endpoint}", DEFAULT_REGION,
                                     *_secret_keys(api, DEFAULT_SECRET, *DEFAULT_SECRET_KEYS)),
                     f"Kubeflow Pipelines' default store at {endpoint}, keys from secret {DEFAULT_SECRET}")
    endpoint = str(settings.get("endpoint") or "")
    if not endpoint:
        raise NotFound(f"the {LAUNCHER_CONFIGMAP} ConfigMap names no minio endpoint")
    if "://" not in endpoint:
        endpoint = ("http://" if settings.get("disableSSL", False) else "https://") + endpoint
    credentials = settings.get("credentials") or {}
    source = f"{endpoint} as the {LAUNCHER_CONFIGMAP} ConfigMap names it"
    region = str(settings.get("region") or DEFAULT_REGION)
    if credentials.get("fromEnv"):
        return Found(storage.S3Store(endpoint, region), f"{source}, keys from the environment")
    reference = credentials.get("secretRef") or {}
    name, access, secret = (reference.get(field) for field in ("secretName", "accessKeyKey", "secretKeyKey"))
    if not (name and access and secret):
        raise NotFound(f"the {LAUNCHER_CONFIGMAP} ConfigMap's minio credentials name no secretRef "
                       "(secretName, accessKeyKey, secretKeyKey)")
    return Found(storage.S3Store(endpoint, region, *_secret_keys(api, name, access, secret)),
                 f"{source}, keys from secret {name}")


def _provider_settings(api: _KubernetesApi, bucket: str, key: str) -> dict | None:
    """The launcher ConfigMap's settings for this bucket and key (an override
    over the default), or None when it names no minio provider."""
    try:
        configmap = api.get(f"configmaps/{LAUNCHER_CONFIGMAP}")
    except NotFound as error:
        if error.status in (403, 404):  # optional, as for the launcher; so is a ConfigMap train may not read
            return None
        raise
    text = (configmap.get("data") or {}).get("providers") or ""
    if not text:
        return None
    import yaml  # kfp's own dependency

    try:
        providers = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise NotFound(f"the {LAUNCHER_CONFIGMAP} ConfigMap's providers entry is not YAML ({error})") from None
    malformed = NotFound(f"the {LAUNCHER_CONFIGMAP} ConfigMap's providers.minio is not in the launcher's form "
                         "(default: a mapping; overrides: a list of mappings; credentials.secretRef: a mapping)")
    minio = _field(providers, "minio") if isinstance(providers, dict) else providers
    if minio is None:
        return None
    if not isinstance(minio, dict):
        raise malformed
    default, overrides = _field(minio, "default"), _field(minio, "overrides") or []
    if default is None and not overrides:
        return None
    if not isinstance(default or {}, dict) or not isinstance(overrides, list) \
            or not all(isinstance(override, dict) for override in overrides):
        raise malformed
    settings = dict(default or {})
    for override in overrides:
        prefix = str(override.get("keyPrefix") or "")
        if override.get("bucketName") == bucket and key.startswith(prefix):
            settings.update({name: value for name, value in override.items() if value not in (None, "")})
            break
    credentials = settings.get("credentials") or {}
    if not isinstance(credentials, dict) or not isinstance(credentials.get("secretRef") or {}, dict):
        raise malformed
    return settings


def _field(mapping: dict, name: str):
    """A field as Go's JSON decoder finds it: the case of the name does not matter ("Overrides")."""
    if not isinstance(mapping, dict):
        return None
    return next((value for field, value in mapping.items() if str(field).lower() == name.lower()), None)


def _default_endpoint(environ: Mapping[str, str]) -> str:
    host, port = environ.get("MINIO_SERVICE_SERVICE_HOST"), environ.get("MINIO_SERVICE_SERVICE_PORT")
    if host and port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for endpoint in DEFAULT_ENDPOINTS:
        name, _, port = endpoint.rpartition(":")
        try:
            socket.getaddrinfo(name, int(port))
        except OSError:
            continue
        return endpoint
    raise NotFound(f"none of Kubeflow Pipelines' default stores ({', '.join(DEFAULT_ENDPOINTS)}) is known to "
                   f"this cluster's DNS, and the {LAUNCHER_CONFIGMAP} ConfigMap names none")


def _secret_keys(api: _KubernetesApi, name: str, access_key: str, secret_key: str) -> tuple[str, str]:
    """(access key id, secret access key) from the secret's entries ``access_key`` and ``secret_key``."""
    data = api.get(f"secrets/{name}").get("data") or {}
    missing = [key for key in (access_key, secret_key) if not data.get(key)]
    if missing:
        raise NotFound(f"secret {name} has no {' or '.join(missing)}")
    try:
        access, secret = (base64.b64decode(data[key]).decode() for key in (access_key, secret_key))
    except (ValueError, UnicodeDecodeError):
        raise NotFound(f"secret {name}: its keys are not base64 text") from None
    return access, secret


@dataclasses.dataclass(frozen=True)
class _KubernetesApi:
    """The pod's namespace on the Kubernetes API, as the pod's service account (in-cluster access)."""

    base_url: str
    token: str
    context: ssl.SSLContext

    @classmethod
    def in_pod(cls, environ: Mapping[str, str], service_account_dir: str) -> _KubernetesApi:
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not (host and port):
            raise NotFound("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST)")
        try:
            with open(os.path.join(service_account_dir, "token"), encoding="utf-8") as file:
                token = file.read().strip()
            with open(os.path.join(service_account_dir, "namespace"), encoding="utf-8") as file:
                namespace = file.read().strip()
            context = ssl.create_default_context(cafile=os.path.join(service_account_dir, "ca.crt"))
        except (OSError, ssl.SSLError) as error:
            raise NotFound(f"the pod's service account cannot be read ({error})") from None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}/api/v1/namespaces/{urllib.parse.quote(namespace)}", token, context)

    def get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.base_url}/{path}", headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_S, context=self.context) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            reason = {403: "the pod's service account may not read it", 404: "not found"}.get(error.code, error.reason)
            raise NotFound(f"{path} in this namespace: {reason} (HTTP {error.code})", error.code) from None
        except (OSError, ValueError) as error:
            raise NotFound(f"the Kubernetes API did not answer for {path} ({error})") from None
