"""Train finds Kubeflow Pipelines' own artifact store as the launcher in its pod does.

The cluster is played by two real servers on loopback. The Kubernetes API's
read of a namespaced object (``GET /api/v1/namespaces/NS/secrets/NAME`` and
``.../configmaps/NAME``; tests/api_standins.RecordingAPI over TLS), answered
as the API server answers: the object as JSON with base64 Secret data, a
``Status`` with the HTTP code otherwise, the bearer token required, the
cluster CA in the service account folder. And the store: moto's S3 server
behind a proxy that records each request's signature. The rules it is held
to are the launcher's (kubeflow/pipelines backend/src/v2/config and
objectstore, 2.0.5 to 2.17), cited in kic.runtime.kfp_artifact_store.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import threading
import types

import pytest
from api_standins import RecordingAPI
from gcs_emulator import LOOPBACK, FlakyProxy

from kic import storage
from kic.runtime import kfp_artifact_store, steps

NAMESPACE = "kubeflow-user-example-com"
TOKEN = "service-account-token"
MODEL_URI = "minio://{bucket}/v2/artifacts/training-pipeline/run-1/train/model"


class KubernetesApi:
    """Namespaced GETs of the Kubernetes API: ``objects`` maps "secrets/NAME" to the object, or to an HTTP
    status to answer with; a request without the service account's token is answered 401, as the API
    server does. Its ``routes`` are served by a RecordingAPI (``api``)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict | int] = {}
        self.api: RecordingAPI | None = None

    def routes(self) -> list:
        def answer(request, match):
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return 401, _status(401, "Unauthorized")
            found = self.objects.get(match[1], 404)
            if isinstance(found, int):
                return found, _status(found, {403: "Forbidden", 404: "NotFound"}[found])
            return found

        return [("GET", f"/api/v1/namespaces/{NAMESPACE}/((?:secrets|configmaps)/[^/]+)", answer)]

    @property
    def requests(self) -> list[str]:
        return [request.path for request in self.api.requests]

    def secret(self, name: str, **data: str) -> None:
        self.objects[f"secrets/{name}"] = {
            "kind": "Secret", "apiVersion": "v1", "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "Opaque", "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}

    def configmap(self, name: str, **data: str) -> None:
        self.objects[f"configmaps/{name}"] = {
            "kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data}


def _status(code: int, reason: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}


def _self_signed(folder) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    certificate_file, key_file = folder / "ca.crt", folder / "tls.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(certificate_file), str(key_file)


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """This process as a pipeline pod: a service account folder (token, namespace, CA) and the API's address."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    certificate, key = _self_signed(account)
    (account / "token").write_text(TOKEN + "\n")
    (account / "namespace").write_text(NAMESPACE)
    kubernetes = KubernetesApi()
    with RecordingAPI(kubernetes.routes(), tls=(certificate, key)) as kubernetes.api:
        monkeypatch.setattr(kfp_artifact_store, "SERVICE_ACCOUNT_DIR", str(account))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", LOOPBACK)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kubernetes.api.port))
        for name in ("MINIO_SERVICE_SERVICE_HOST", "MINIO_SERVICE_SERVICE_PORT"):
            monkeypatch.delenv(name, raising=False)
        yield kubernetes


@pytest.fixture
def store(s3_server, monkeypatch):
    """The cluster's store: moto behind a recording proxy. Nothing in the environment points at it, and the
    environment's keys are not the store's: only what train finds can reach it."""
    proxy = FlakyProxy(s3_server.endpoint, fail_every=0)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for name in storage.S3_ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-users-own-aws-key")
    storage.use_for_minio(None)
    storage.reset_client()
    try:
        yield types.SimpleNamespace(proxy=proxy, bucket=s3_server.new_bucket().removeprefix("s3://"),
                                    client=s3_server.client, host_port=proxy.endpoint.removeprefix("http://"))
    finally:
        storage.use_for_minio(None)
        storage.reset_client()
        proxy.shutdown()
        proxy.server_close()


def _train_model(bucket: str, tmp_path):
    return types.SimpleNamespace(uri=MODEL_URI.format(bucket=bucket), path=str(tmp_path / "model"))


def _checkpoints_written_with(store, uri: str, access_key: str) -> None:
    """A file written at ``uri`` lands in the store's bucket, signed with ``access_key``."""
    store.proxy.authorizations.clear()
    storage.write_text(storage.join(uri, "probe.txt"), "here")
    key = uri.removeprefix(f"minio://{store.bucket}/") + "/probe.txt"
    assert store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read() == b"here"
    assert store.proxy.authorizations and all(f"Credential={access_key}/" in header
                                              for header in store.proxy.authorizations)


def test_with_no_launcher_config_train_uses_the_default_secret_and_the_namespaces_minio_service(
        pod, store, tmp_path, monkeypatch):
    # The launcher up to 2.14: the namespace's own minio-service, found by its service environment variables.
    host, port = store.host_port.split(":")
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_HOST", host)
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_PORT", port)
    pod.secret("mlpipeline-minio-artifact", accesskey="minio-access", secretkey="minio-secret")
    model = _train_model(store.bucket, tmp_path)
    lines: list[str] = []
    monkeypatch.setattr(steps, "log", lines.append)

    options = steps._checkpointing(model, "", 100)

    expected = f"minio://{store.bucket}/v2/artifacts/training-pipeline/run-1/train/checkpoints"
    assert options == {"checkpoint_uri": expected, "checkpoint_every_steps": 100}
    assert any("Kubeflow Pipelines' store" in line and "keys from secret mlpipeline-minio-artifact" in line
               for line in lines), lines
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/mlpipeline-minio-artifact" in pod.requests
    _checkpoints_written_with(store, expected, "minio-access")


def test_the_launcher_configmap_names_the_endpoint_and_secret_and_a_matching_override_wins(pod, store):
    pod.secret("artifact-keys", id="store-access", key="store-secret")
    pod.secret("other-keys", id="other-access", key="other-secret")
    pod.configmap("kfp-launcher", defaultPipelineRoot=f"minio://{store.bucket}/v2/artifacts", providers=f"""
minio:
  default:
    endpoint: nowhere.invalid:9000
    disableSSL: true
    region: eu-west-1
    credentials:
      fromEnv: false
      secretRef: {{secretName: other-keys, accessKeyKey: id, secretKeyKey: key}}
  Overrides:
    - bucketName: another-bucket
      endpoint: wrong.invalid:9000
    - bucketName: {store.bucket}
      keyPrefix: v2/artifacts
      endpoint: {store.host_port}
      credentials:
        secretRef: {{secretName: artifact-keys, accessKeyKey: id, secretKeyKey: key}}
""")
    found = kfp_artifact_store.find(MODEL_URI.format(bucket=store.bucket)).store

    assert (found.endpoint_url, found.region) == (f"http://{store.host_port}", "eu-west-1")
    assert (found.access_key_id, found.secret_access_key) == ("store-access", "store-secret")
    assert "store-secret" not in repr(found)
    storage.use_for_minio(found)
    _checkpoints_written_with(store, f"minio://{store.bucket}/v2/artifacts/r/train/checkpoints", "store-access")


def test_s3_uris_keep_the_users_own_settings_while_minio_uris_go_to_the_clusters_store(store, s3_server,
                                                                                      monkeypatch):
    storage.use_for_minio(storage.S3Store(f"http://{store.host_port}", "minio", "minio-access", "minio-secret"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)  # the user's own S3, not behind the proxy
    storage.reset_client()
    store.proxy.authorizations.clear()
    storage.write_text(f"s3://{store.bucket}/users/data.txt", "user data")
    assert store.proxy.authorizations == []  # nothing of s3:// went to the cluster's store
    _checkpoints_written_with(store, f"minio://{store.bucket}/v2/artifacts/r/train/checkpoints", "minio-access")
    # Between the two stores a copy goes through a local file, as between any two.
    storage.copy_file(f"s3://{store.bucket}/users/data.txt", f"minio://{store.bucket}/copied.txt")
    assert storage.read_text(f"minio://{store.bucket}/copied.txt") == "user data"


@pytest.mark.parametrize(("answer", "reason"), [
    (403, "secrets/mlpipeline-minio-artifact in this namespace: the pod's service account may not read it"),
    (404, "secrets/mlpipeline-minio-artifact in this namespace: not found"),
])
def test_a_secret_train_cannot_read_leaves_it_without_checkpoints_and_says_why(pod, store, tmp_path, monkeypatch,
                                                                               answer, reason):
    host, port = store.host_port.split(":")
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_HOST", host)
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_PORT", port)
    pod.objects["secrets/mlpipeline-minio-artifact"] = answer
    lines: list[str] = []
    monkeypatch.setattr(steps, "log", lines.append)

    assert steps._checkpointing(_train_model(store.bucket, tmp_path), "", 100)["checkpoint_uri"] == ""
    assert len(lines) == 1 and "no checkpoints" in lines[0] and reason in lines[0], lines
    assert not storage.can_reach_minio()


@pytest.mark.parametrize("providers", [
    "minio: [not, a, mapping]",
    "minio: {default: {endpoint: 'h:9000', credentials: [secretRef]}}",
    "minio: {default: {endpoint: 'h:9000'}, overrides: [just-a-string]}",
    "minio: {default: {endpoint: 'h:9000', credentials: {secretRef: name-only}}}",
    "minio: {default: [",
    "just text",
])
def test_a_malformed_launcher_config_is_a_reason_not_a_crash(pod, providers):
    pod.configmap("kfp-launcher", providers=providers)
    with pytest.raises(kfp_artifact_store.NotFound, match="kfp-launcher ConfigMap's providers"):
        kfp_artifact_store.find("minio://mlpipeline/v2/artifacts/x")


def test_outside_a_pod_or_without_a_known_store_find_says_why(pod, monkeypatch):
    pod.secret("mlpipeline-minio-artifact", accesskey="a", secretkey="b")
    with pytest.raises(kfp_artifact_store.NotFound, match="seaweedfs.kubeflow:9000, minio-service.kubeflow:9000"):
        kfp_artifact_store.find("minio://mlpipeline/v2/artifacts/x")  # neither default name resolves here
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(kfp_artifact_store.NotFound, match="not in a Kubernetes pod"):
        kfp_artifact_store.find("minio://mlpipeline/v2/artifacts/x")


def test_a_wrong_token_or_an_untrusted_api_is_refused_not_trusted(pod, tmp_path, monkeypatch):
    account = tmp_path / "other-account"
    account.mkdir()
    for name in ("namespace", "ca.crt"):
        (account / name).write_bytes((tmp_path / "serviceaccount" / name).read_bytes())
    (account / "token").write_text("stolen")
    with pytest.raises(kfp_artifact_store.NotFound, match="HTTP 401"):
        kfp_artifact_store.find("minio://b/k", service_account_dir=str(account))
    _self_signed(account)  # a CA the API's certificate is not signed by
    (account / "token").write_text(TOKEN)
    with pytest.raises(kfp_artifact_store.NotFound, match="did not answer"):
        kfp_artifact_store.find("minio://b/k", service_account_dir=str(account))


def test_a_step_given_a_minio_uri_reads_it_from_the_clusters_store(pod, store, monkeypatch):
    # As the Kubeflow Pipelines UI shows an earlier run's artifact, e.g. a baseline model.
    host, port = store.host_port.split(":")
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_HOST", host)
    monkeypatch.setenv("MINIO_SERVICE_SERVICE_PORT", port)
    pod.secret("mlpipeline-minio-artifact", accesskey="minio-access", secretkey="minio-secret")
    store.client.put_object(Bucket=store.bucket, Key="v2/artifacts/old-run/export/model/LATEST", Body=b"v1")
    lines: list[str] = []
    monkeypatch.setattr(steps, "log", lines.append)

    @steps.fails_cleanly(tensorflow=False)
    def reading_step(*, baseline_model_uri: str, top_k: int) -> str:
        return storage.read_text(storage.join(baseline_model_uri, "LATEST"))

    uri = f"minio://{store.bucket}/v2/artifacts/old-run/export/model"
    assert reading_step(baseline_model_uri=uri, top_k=3) == "v1"
    storage.use_for_minio(None)
    pod.objects["secrets/mlpipeline-minio-artifact"] = 403
    with pytest.raises(SystemExit):
        reading_step(baseline_model_uri=uri, top_k=3)
    assert any(line.startswith(f"reading failed: UserError: baseline_model_uri={uri}: kic cannot reach Kubeflow "
                               "Pipelines' store") and "may not read it" in line for line in lines), lines
