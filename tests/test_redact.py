"""Secrets never reach the terminal: kic submit with each kind of credential, against a loopback stand-in of the
Kubeflow Pipelines API that echoes them back in its refusals, and against a host that does not answer."""

import socket
import subprocess
import sys

import pytest
from api_standins import RecordingAPI, kubeflow_routes

from kic import cli
from kic.redact import redact

URL_PASSWORD, COOKIE, TOKEN, FILE_TOKEN = "url-pa55word", "c00kie-value-77", "t0ken-value-42", "file-t0ken-99"


def echoing_refusal(method: str, path: str, status: int):
    """A refusal that repeats the request's credentials, as some proxies and API servers do in their errors."""
    def answer(request, _match):
        echoed = f"Authorization: {request.headers.get('authorization')}; Cookie: {request.headers.get('cookie')}"
        return status, {"error": "refused", "message": f"request rejected: {echoed}"}
    return (method, path, answer)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kic(*arguments: str) -> tuple[int, str]:
    """A real kic process: everything it writes, library logs and tracebacks included."""
    result = subprocess.run([sys.executable, "-m", "kic.cli", *arguments], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


# Refused when kic checks the credentials (401, listing experiments), and when it sends the run (400).
@pytest.mark.parametrize("refusal, credentials", [
    (("GET", "/apis/v2beta1/experiments", 401), "--token and --cookies"),
    (("POST", "/apis/v2beta1/runs", 400), "--token-file")])
def test_credentials_echoed_by_the_api_are_blanked(tmp_path, capsys, caplog, refusal, credentials):
    token_file = tmp_path / "token"
    token_file.write_text(FILE_TOKEN)
    with RecordingAPI([echoing_refusal(*refusal), *kubeflow_routes()]) as api:
        by_token = ["--token", TOKEN, "--cookies", f"authservice_session={COOKIE}"]
        options = by_token if credentials.startswith("--token ") else ["--token-file", str(token_file)]
        code = cli.main(["submit", "--no-image-check", "--data", "tfds:beans", "--host", api.endpoint, *options])
        output = "".join(capsys.readouterr()) + caplog.text  # in process: the libraries' logs are caplog's
        sent = {request.headers.get("authorization") for request in api.requests}
    assert code == 1 and "request rejected: Authorization: Bearer ***; Cookie: ***" in output, output[-3000:]
    for secret in (TOKEN, COOKIE, FILE_TOKEN):  # shown without what it echoed
        assert secret not in output
    assert sent & {f"Bearer {TOKEN}", f"Bearer {FILE_TOKEN}"}  # the credentials did go to the API


def test_a_password_in_the_host_url_is_blanked_when_the_host_does_not_answer(capsys):
    host = f"http://alice:{URL_PASSWORD}@127.0.0.1:{closed_port()}"
    code, output = kic("submit", "--no-image-check", "--data", "tfds:beans", "--host", host, "--token", TOKEN)
    assert code == 1 and "cannot reach Kubeflow Pipelines at http://alice:***@127.0.0.1" in output, output[-3000:]
    assert URL_PASSWORD not in output and TOKEN not in output
    code = cli.main(["submit", "--no-image-check", "--data", "tfds:beans", "--host", host, "--dry-run", "--vertex",
                     "--cookies", f"session={COOKIE}"])  # options misplaced: their values are in the problems
    output = "".join(capsys.readouterr())
    assert code == 2 and "--cookies=" in output and COOKIE not in output and URL_PASSWORD not in output, output


@pytest.mark.parametrize("text, secret", [
    ("cannot reach https://bob:hunter2hunter@kf.example.com/pipeline: refused", "hunter2hunter"),
    ("headers {'Authorization': 'Bearer abc.def-ghi'}", "abc.def-ghi"),
    ("Cookie: authservice_session=MTY4; oauth2_proxy=XYZW", "MTY4"),
    ("url https://x/?access_token=ya29.secret&alt=json", "ya29.secret"),
    ("--token='opaque-token-1'", "opaque-token-1"),
    ("a bearer token, or Bearer eyJhbGciOi.x", "eyJhbGciOi.x"),
])
def test_each_form_of_secret_is_blanked(text, secret):
    assert secret not in redact(text) and "***" in redact(text)
