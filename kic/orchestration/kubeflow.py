"""Kubeflow Pipelines as a target of ``kic submit`` and ``kic schedule``, through kfp.Client.

The client's own settings apply as they do for any kfp.Client user: the
KF_PIPELINES_* environment variables (endpoint, UI endpoint, IAP client IDs,
default experiment name, service-account token path) and the kfp CLI's
context file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from kic.errors import Problem, UnreachableError, UserError
from kic.orchestration import cron, kfp_backend
from kic.orchestration.preflight import FAILED, OK, UNCHECKED, WARNING, Check
from kic.orchestration.remote import RejectedError, Submitted
from kic.redact import redact

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client reads these two itself
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
DEFAULT_EXPERIMENT_ENV = "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "Default"  # kfp.Client's own default


@dataclasses.dataclass(frozen=True)
class KubeflowTarget:
    host: str = ""  # the API's URL; empty: $KF_PIPELINES_ENDPOINT
    namespace: str = ""  # multi-user deployments: the profile's namespace
    experiment: str = ""  # empty: $KF_PIPELINES_DEFAULT_EXPERIMENT_NAME, else "Default"
    service_account: str = ""  # the Kubernetes service account of the run's pods
    pipeline_root: str = ""  # empty: the deployment's default
    token: str = ""  # a bearer token (kfp.Client's existing_token)
    token_file: str = ""  # a file holding the token, re-read on each request (projected service-account tokens)
    cookies: str = ""  # a Cookie header, e.g. "authservice_session=..." behind Dex/oauth2-proxy

    platform: ClassVar[str] = "Kubeflow Pipelines"
    compile_target: ClassVar[str] = "kfp"
    cron_dialect: ClassVar[cron.Dialect] = cron.KUBEFLOW

    @property
    def endpoint(self) -> str:
        return (self.host or os.environ.get(ENDPOINT_ENV, "")).rstrip("/")

    def problems(self) -> list[Problem]:
        found = []
        if not self.endpoint:
            found.append(Problem("--host", "", f"required: the Kubeflow Pipelines API's URL (or set {ENDPOINT_ENV}); "
                                               "--vertex sends to Vertex AI"))
        elif not self.endpoint.startswith(("http://", "https://")):
            found.append(Problem("--host", redact(self.endpoint), "a URL: http(s)://HOST[:PORT][/PATH]"))
        if self.token and self.token_file:
            found.append(Problem("--token-file", self.token_file, "either --token or --token-file, not both"))
        elif self.token_file and not os.path.isfile(self.token_file):
            found.append(Problem("--token-file", self.token_file, "no such file"))
        return found

    def submit(self, pipeline_path: str, arguments: Mapping[str, Any], name: str) -> Submitted:
        client = self._client()
        with self._answers("run"):
            result = client.create_run_from_pipeline_package(
                pipeline_path, arguments=dict(arguments), run_name=name, experiment_name=self.experiment or None,
                namespace=self.namespace or None, pipeline_root=self.pipeline_root or None,
                service_account=self.service_account or None)
        return Submitted("run", result.run_id, f"{self._ui()}/#/runs/details/{result.run_id}")

    def schedule(self, pipeline_path: str, arguments: Mapping[str, Any], cron_expression: str,
                 name: str) -> Submitted:
        client = self._client()
        with self._answers("recurring run"):
            experiment = client.create_experiment(
                self.experiment or os.environ.get(DEFAULT_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
                namespace=self.namespace or None)
            recurring = client.create_recurring_run(
                experiment.experiment_id, name, cron_expression=cron_expression, max_concurrency=1,
                no_catchup=True, params=dict(arguments), pipeline_package_path=pipeline_path,
                pipeline_root=self.pipeline_root or None, service_account=self.service_account or None)
        run_id = recurring.recurring_run_id
        return Submitted("schedule", run_id, f"{self._ui()}/#/recurringrun/details/{run_id}")

    def checks(self, spec: Mapping[str, Any]) -> list[Check]:
        """Whether the API answers these credentials, and whether the backend's release has what ``spec``
        (the compiled pipeline) needs."""
        from kic import compat

        where = f"{self.platform} at {redact(self.endpoint)}"
        try:
            client = self._client()
            with self._answers("connection"):
                # Read raw: kfp.Client's model of the answer drops the release (tag_name).
                health = compat.kfp_healthz(client)
                # Any call that needs the credentials (healthz may not).
                client.list_experiments(page_size=1, namespace=self.namespace or None)
        except UserError as error:
            return [Check(where, FAILED, str(error))]
        except ValueError as error:
            return [Check(where, FAILED, redact(f"its health check answered no JSON ({error})"))]
        return [Check(where, OK, "answers, and takes the credentials"), backend_check(spec, health)]

    def _client(self):
        import kfp
        from kfp.client import ServiceAccountTokenVolumeCredentials

        with warnings.catch_warnings(), self._answers("connection", quiet=False):  # IAP sign-in may prompt
            warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline", category=FutureWarning)
            return kfp.Client(
                host=self.endpoint, namespace=self.namespace or "kubeflow", existing_token=self.token or None,
                cookies=self.cookies or None,
                credentials=ServiceAccountTokenVolumeCredentials(self.token_file) if self.token_file else None)

    def _ui(self) -> str:
        """Where the UI is, as kfp.Client itself links to it."""
        ui = os.environ.get(UI_ENDPOINT_ENV) or self.endpoint
        return ui.rstrip("/") if ui.startswith(("http://", "https://")) else f"http://{ui}"

    @contextlib.contextmanager
    def _answers(self, what: str, *, quiet: bool = True) -> Iterator[None]:
        """The API's refusals and unreachability as user errors; when quiet,
        the client's own prints of links (ours follow) kept off the output."""
        import urllib3
        from kfp_server_api.exceptions import ApiException

        try:
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                yield
        except ApiException as error:
            # The endpoint may carry a password, and an API's answer may echo the request's headers.
            reason = redact(f"{error.status} {error.reason}: {_message(error.body)}")
            where = f"{self.platform} at {redact(self.endpoint)}"
            if error.status in (401, 403):
                raise UnreachableError(f"{where} refused the credentials ({reason}); pass --token, --token-file or "
                                       "--cookies as the deployment expects") from None
            raise RejectedError(f"{where} refused the {what} ({reason})") from None
        except (urllib3.exceptions.HTTPError, TimeoutError) as error:
            raise UnreachableError(redact(f"cannot reach {self.platform} at {self.endpoint}: {error}")) from None


def _message(body: Any) -> str:
    """The error message in an API error body (JSON with a message), or the body itself."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    with contextlib.suppress(ValueError, AttributeError):
        document = json.loads(text)
        return str(document.get("message") or document.get("error", {}).get("message") or text)
    return text


def backend_check(spec: Mapping[str, Any], health: Mapping[str, Any]) -> Check:
    """The backend's release (as its health check names it) against what ``spec`` needs."""
    item = "Kubeflow Pipelines backend release"
    needed = kfp_backend.needs(spec)
    version = kfp_backend.reported_version(health)
    if version is None:
        minimum, full = kfp_backend.minimum_version(spec), kfp_backend.full_version(spec)
        uses = "; ".join(f"{feature.name}: {kfp_backend.format_version(feature.since)}" for feature in needed)
        return Check(item, UNCHECKED, f"the backend does not say which release it is (tag_name "
                                      f"{health.get('tag_name', health.get('apiServerTagName'))!r}: releases 2.4 to "
                                      f"2.15 say 'unknown'); the pipeline needs "
                                      f"{kfp_backend.format_version(minimum)} or later, and "
                                      f"{kfp_backend.format_version(full)} for all it uses ({uses or 'nothing more'})")
    failing, lost = kfp_backend.shortfalls(spec, version)
    shown = kfp_backend.format_version(version)
    if failing:
        return Check(item, FAILED, f"{shown} is too old: " + "; ".join(failing + lost))
    if lost:
        return Check(item, WARNING, f"{shown} runs the pipeline without: " + "; ".join(lost))
    return Check(item, OK, f"{shown} has everything the pipeline uses")
