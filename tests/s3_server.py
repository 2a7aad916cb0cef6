"""pytest fixtures: a real S3 API on loopback (moto's server), and a flaky proxy in front of it.

Registered for all tests by ``pytest_plugins`` in conftest.py.

``s3_server`` (function scope; the server itself is started once a session)
    Starts moto's S3 server (in memory, in a thread) on 127.0.0.1 and a free port,
    and for the test points boto3 at it the way a user points it at MinIO:
    ``AWS_ENDPOINT_URL_S3`` and static keys in ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``; the machine's own AWS configuration files and the
    instance-metadata lookup are switched off, so nothing leaves loopback. Only for
    the test: an S3 endpoint in the environment changes what kic does elsewhere
    (train's default checkpoints under a ``minio://`` root). Yields an
    :class:`S3Server`:

    * ``.endpoint``      - ``"http://127.0.0.1:PORT"``
    * ``.new_bucket()``  - creates a fresh, empty bucket and returns ``"s3://NAME"``
    * ``.client``        - a boto3 S3 client bound to the server, for seeding or
      checking objects independently of ``kic.storage``.

``flaky_s3`` (function scope, uses ``s3_server``)
    The ``flaky_gcs`` proxy (tests/gcs_emulator.py) in front of the S3 server, with
    ``AWS_ENDPOINT_URL_S3`` pointed at it for the test; ``fail_every`` starts at 0
    (nothing fails until the test says so, e.g. ``fail_next(1)``).

Both servers are stopped at teardown, also when a test fails.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from gcs_emulator import LOOPBACK, FlakyProxy, proxying, reset_kic_client

ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"


class S3Server:
    """A running S3 server; see the module docstring."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self._names = itertools.count()

    def new_bucket(self, prefix: str = "kic-test") -> str:
        name = f"{prefix}-{next(self._names)}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def _s3_backend() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AWS_ACCESS_KEY_ID", "kic-test")  # for S3Server's own client, made here
            patch.setenv("AWS_SECRET_ACCESS_KEY", "kic-test-secret")
            patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            backend = S3Server(f"http://{host}:{port}")
        yield backend
    finally:
        server.stop()
        reset_kic_client()


@pytest.fixture
def s3_server(_s3_backend: S3Server, tmp_path_factory, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    nowhere = str(tmp_path_factory.getbasetemp() / "no-aws-config")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENDPOINT_ENV, _s3_backend.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kic-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "kic-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", nowhere)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reset_kic_client()
    yield _s3_backend
    reset_kic_client()


@pytest.fixture
def flaky_s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    with proxying(FlakyProxy(s3_server.endpoint, fail_every=0), ENDPOINT_ENV, monkeypatch) as proxy:
        yield proxy


__all__ = ["S3Server", "flaky_s3", "s3_server"]
