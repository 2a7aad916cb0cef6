"""Vertex AI Pipelines as a target of ``kic submit`` and ``kic schedule``,
through google-cloud-aiplatform (``pip install 'kic[vertex]'``).

A run is a PipelineJob, a recurring run a PipelineJobSchedule. The REST
transport is used (rather than the default gRPC): it is what the tests run
against, and it passes through HTTP proxies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from kic import storage
from kic.errors import Problem, UnreachableError, UserError
from kic.orchestration import cron
from kic.orchestration.preflight import FAILED, OK, UNCHECKED, Check
from kic.orchestration.remote import RejectedError, Submitted

CONSOLE = "https://console.cloud.google.com/vertex-ai"
INSTALL_HINT = "pip install 'kic[vertex]'"
_RESOURCE_NAME = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/\w+/(?P<id>[^/]+)")


@dataclasses.dataclass(frozen=True)
class VertexTarget:
    project: str = ""
    region: str = ""
    pipeline_root: str = ""  # gs:// prefix for the runs' artifacts
    service_account: str = ""  # the Google Cloud service account the run acts as; empty: the default one
    token: str = ""  # an OAuth 2.0 access token; empty: application default credentials
    api_endpoint: str = ""  # empty: REGION-aiplatform.googleapis.com

    platform: ClassVar[str] = "Vertex AI"
    compile_target: ClassVar[str] = "vertex"
    cron_dialect: ClassVar[cron.Dialect] = cron.VERTEX

    def problems(self) -> list[Problem]:
        installed = importlib.util.find_spec("google.cloud.aiplatform") is not None
        found = [] if installed else [Problem("--vertex", True, f"needs google-cloud-aiplatform: {INSTALL_HINT}")]
        if not self.project:
            found.append(Problem("--project", self.project, "required: the Google Cloud project ID"))
        elif not re.fullmatch(r"[a-z][-a-z0-9.:]{3,62}[a-z0-9]", self.project):
            found.append(Problem("--project", self.project, "a Google Cloud project ID (lowercase letters, digits "
                                                            "and hyphens)"))
        if not self.region:
            found.append(Problem("--region", self.region, "required: the Vertex AI region, e.g. us-central1"))
        elif installed:
            from google.cloud.aiplatform import utils

            try:
                utils.validate_region(self.region)
            except ValueError:
                found.append(Problem("--region", self.region, "not a Vertex AI region (e.g. us-central1, "
                                                              "europe-west4)"))
        bucket = self.pipeline_root[len(storage.GCS_SCHEME):].partition("/")[0]
        if not storage.is_gcs(self.pipeline_root) or not bucket:
            found.append(Problem("--pipeline-root", self.pipeline_root, "required: a gs://BUCKET/PATH for the runs' "
                                                                        "artifacts"))
        if self.service_account and "@" not in self.service_account:
            found.append(Problem("--service-account", self.service_account,
                                 "a service account's e-mail, NAME@PROJECT.iam.gserviceaccount.com"))
        return found

    def submit(self, pipeline_path: str, arguments: Mapping[str, Any], name: str) -> Submitted:
        from google.cloud import aiplatform  # noqa: F401  (imported before _answers quiets its loggers)

        with self._answers("pipeline job"):
            job = self._job(pipeline_path, arguments, name)
            job.submit(service_account=self.service_account or None)
        return Submitted("run", *_console(job.resource_name, "runs"))

    def schedule(self, pipeline_path: str, arguments: Mapping[str, Any], cron_expression: str,
                 name: str) -> Submitted:
        from google.cloud import aiplatform  # before _answers quiets its loggers

        with self._answers("schedule"):
            job = self._job(pipeline_path, arguments, name)
            schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=name,
                                                      credentials=self._credentials())
            # allow_queueing=False: a run due while one is running is skipped, not queued.
            schedule.create(cron=cron_expression, max_concurrent_run_count=1, allow_queueing=False,
                            service_account=self.service_account or None)
        return Submitted("schedule", *_console(schedule.resource_name, "schedules"))

    def checks(self, spec: Mapping[str, Any]) -> list[Check]:
        """That Vertex AI answers in the project and region with these credentials (its API enabled, the
        caller allowed to list pipeline jobs), that the pipeline root's bucket exists and can be read; and,
        not checkable from here, what the first run also needs."""
        where = f"{self.platform} ({self.project}, {self.region})"
        found = []
        try:
            with self._answers("listing of pipeline jobs"):
                self._list_one_pipeline_job()
            found.append(Check(where, OK, "answers, and takes the credentials (the API is enabled)"))
        except UserError as error:
            found.append(Check(where, FAILED, f"{error} (enable it: gcloud services enable aiplatform.googleapis.com "
                                              f"--project {self.project})"))
        bucket = f"{storage.GCS_SCHEME}{self.pipeline_root[len(storage.GCS_SCHEME):].partition('/')[0]}"
        try:
            found.append(Check(f"pipeline root bucket {bucket}", OK, "exists") if storage.exists(bucket) else
                         Check(f"pipeline root bucket {bucket}", FAILED,
                               f"no such bucket: gcloud storage buckets create {bucket} --location {self.region}"))
        except storage.StorageError as error:
            found.append(Check(f"pipeline root bucket {bucket}", FAILED, str(error)))
        account = self.service_account or "the Compute Engine default service account"
        found.append(Check(f"service account {account}", UNCHECKED,
                           "needs roles/aiplatform.user and read-write on the pipeline root bucket (roles/storage."
                           "objectUser), read on the data and the images' repository (roles/artifactregistry.reader); "
                           "whoever submits needs roles/iam.serviceAccountUser on it"))
        found += [Check(f"GPU quota custom_model_training_{name}_gpus", UNCHECKED,
                        f"in {self.region}, at least the GPUs of one run (IAM & Admin > Quotas)")
                  for name in _gpu_quota_names(spec)]
        return found

    def _list_one_pipeline_job(self) -> None:
        from google.cloud import aiplatform_v1

        client = aiplatform_v1.PipelineServiceClient(
            transport="rest", credentials=self._credentials(),
            client_options={"api_endpoint": self.api_endpoint or f"{self.region}-aiplatform.googleapis.com"})
        client.list_pipeline_jobs(request={"parent": f"projects/{self.project}/locations/{self.region}",
                                           "page_size": 1})

    def _job(self, pipeline_path: str, arguments: Mapping[str, Any], name: str):
        from google.cloud import aiplatform

        # Every setting explicit: aiplatform.init keeps what an earlier call in this process set.
        aiplatform.init(project=self.project, location=self.region, api_transport="rest",
                        api_endpoint=self.api_endpoint or f"{self.region}-aiplatform.googleapis.com")
        return aiplatform.PipelineJob(display_name=name, template_path=pipeline_path,
                                      pipeline_root=self.pipeline_root, parameter_values=dict(arguments),
                                      project=self.project, location=self.region, credentials=self._credentials())

    def _credentials(self):
        if self.token:
            from google.oauth2.credentials import Credentials

            return Credentials(token=self.token)
        return None  # aiplatform asks google.auth for the application default credentials

    @contextlib.contextmanager
    def _answers(self, what: str) -> Iterator[None]:
        """Refusals, missing credentials and unreachability as user errors;
        aiplatform's own progress lines (ours follow) kept off the output."""
        import requests
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        where = f"{self.platform} ({self.project}, {self.region})"
        try:
            with _quiet("google.cloud.aiplatform"):
                yield
        except auth_exceptions.DefaultCredentialsError as error:
            raise UnreachableError(f"no Google Cloud credentials for {where}: run `gcloud auth application-default "
                                   f"login`, set GOOGLE_APPLICATION_CREDENTIALS, or pass --token ({error})") from None
        except (api_exceptions.Unauthorized, api_exceptions.Forbidden) as error:
            raise UnreachableError(f"{where} refused the credentials ({error.code} {error.message})") from None
        except api_exceptions.GoogleAPICallError as error:
            raise RejectedError(f"{where} refused the {what} ({error.code} {error.message})") from None
        except (auth_exceptions.TransportError, api_exceptions.RetryError, requests.RequestException) as error:
            raise UnreachableError(f"cannot reach {where}: {error}") from None


# Vertex AI's custom-training quota names differ from the accelerator types for these.
_QUOTA_NAMES = {"NVIDIA_H100_80GB": "nvidia_h100", "NVIDIA_H100_MEGA_80GB": "nvidia_h100_mega"}


def _gpu_quota_names(spec: Mapping[str, Any]) -> list[str]:
    """The quota names of the GPUs the compiled pipeline asks for: train's CustomJob worker pools and the
    accelerators of plain tasks (the tuning pipeline's trials)."""
    kinds = set()
    for component in spec.get("components", {}).values():
        pools = component.get("inputDefinitions", {}).get("parameters", {}).get("worker_pool_specs", {})
        for pool in pools.get("defaultValue") or []:
            kinds.add(pool.get("machine_spec", {}).get("accelerator_type", ""))
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        kinds.add(executor.get("container", {}).get("resources", {}).get("accelerator", {}).get("resourceType", ""))
    return sorted(_QUOTA_NAMES.get(kind, kind.replace("NVIDIA_TESLA_", "NVIDIA_").lower())
                  for kind in kinds if kind.startswith("NVIDIA_"))


def _console(resource_name: str, page: str) -> tuple[str, str]:
    """The resource's ID and its page in the Google Cloud console."""
    fields = _RESOURCE_NAME.fullmatch(resource_name)
    if not fields:
        return resource_name, f"{CONSOLE}/pipelines"
    return fields["id"], (f"{CONSOLE}/locations/{fields['location']}/pipelines/{page}/{fields['id']}"
                          f"?project={fields['project']}")


@contextlib.contextmanager
def _quiet(prefix: str) -> Iterator[None]:
    """Raises the loggers under ``prefix`` (each aiplatform module sets its own
    level) to WARNING for the duration."""
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name == prefix or name.startswith(prefix + ".")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
