"""Sends the pipeline to a cluster: one run now (``submit``) or a recurring
run (``schedule``), on Kubeflow Pipelines (``kubeflow.KubeflowTarget``) or
Vertex AI (``vertex.VertexTarget``).

Everything is checked on this machine first, and every problem is reported at
once; a bad value sends nothing. The parameters go through the front door
(``kic.parameters``) for their form and combinations. What only the cluster
can see is left to the pipeline's validate step, which runs there: paths are
paths inside its containers, and ImageNet weights are downloaded there. gs://
URIs are looked up here when this machine can read them, so a missing source
or model fails now; without credentials or permission here they only warn,
since the pipeline's service account may well have them. The target's options
and the cron (in the target's dialect) are checked too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Protocol

from kic import parameters, storage
from kic.errors import ParameterError, Problem, UserError
from kic.orchestration import cron, preflight
from kic.orchestration.preflight import Check

Warn = Callable[[str], None]


class RejectedError(UserError):
    """The platform answered, and refused what was sent (its message says why)."""


class PreflightError(UserError):
    """A check before sending failed: an image that cannot be pulled, a backend too old, ..."""


@dataclasses.dataclass(frozen=True)
class Submitted:
    """A run or a schedule that the platform accepted."""

    kind: str  # "run" or "schedule"
    id: str
    url: str  # where to watch it in the platform's UI


class Target(Protocol):
    """A platform to send the compiled pipeline to."""

    platform: ClassVar[str]  # its name, for messages
    compile_target: ClassVar[str]  # what kic.orchestration.compile calls it
    cron_dialect: ClassVar[cron.Dialect]

    def problems(self) -> list[Problem]: ...

    def checks(self, spec: Mapping[str, Any]) -> list[Check]: ...

    def submit(self, pipeline_path: str, arguments: Mapping[str, Any], name: str) -> Submitted: ...

    def schedule(self, pipeline_path: str, arguments: Mapping[str, Any], cron_expression: str,
                 name: str) -> Submitted: ...


def submit(target: Target, layers: Iterable[Mapping[str, Any]], *, problems: Iterable[Problem] = (),
           pipeline: str = "", name: str = "", warn: Warn = print, check_images: bool = True) -> Submitted:
    """Checks everything, then starts one run of the pipeline on ``target``
    with the parameters that ``layers`` set over the defaults (lowest first,
    as in ``parameters.resolve``). ``problems`` are the caller's own (a
    malformed option), reported with the rest. ``pipeline`` is a compiled
    pipeline to send; by default the pipeline is compiled for the target.
    Before sending, the platform and the images are checked (``preflight``);
    ``check_images`` off leaves the images out."""
    values, machines = _checked(target, layers, problems, None, pipeline, warn)
    with _pipeline_file(target, pipeline, machines) as path:
        _stop_on_failed_checks(target, preflight_checks(target, path, check_images=check_images), warn)
        return target.submit(path, values, name or default_name())


def schedule(target: Target, layers: Iterable[Mapping[str, Any]], cron_expression: str, *,
             problems: Iterable[Problem] = (), pipeline: str = "", name: str = "", warn: Warn = print,
             check_images: bool = True) -> Submitted:
    """As ``submit``, but a recurring run on ``cron_expression`` (in the
    target's dialect): at most one run at a time, and runs missed while one
    was running (or while the schedule was paused) are skipped, not caught up."""
    values, machines = _checked(target, layers, problems, cron_expression, pipeline, warn)
    cron_expression = " ".join(cron_expression.split())
    with _pipeline_file(target, pipeline, machines) as path:
        _stop_on_failed_checks(target, preflight_checks(target, path, check_images=check_images), warn)
        return target.schedule(path, values, cron_expression, name or default_name(cron_expression))


def dry_run(target: Target, layers: Iterable[Mapping[str, Any]], *, problems: Iterable[Problem] = (),
            pipeline: str = "", cron_expression: str | None = None, warn: Warn = print,
            check_images: bool = True) -> list[Check]:
    """Every check ``submit`` (or ``schedule``, with a cron) makes, without sending anything: the
    parameters (raising ParameterError as they do), then the platform, the backend and the images."""
    _values, machines = _checked(target, layers, problems, cron_expression, pipeline, warn)
    checks = [Check("parameters", preflight.OK, "every value checked" + (", and the cron" if cron_expression else ""))]
    with _pipeline_file(target, pipeline, machines) as path:
        return checks + preflight_checks(target, path, check_images=check_images)


def preflight_checks(target: Target, pipeline_path: str, *, check_images: bool = True) -> list[Check]:
    """What the platform says (credentials, backend, bucket) and whether every image can be pulled."""
    spec = preflight.load_spec(pipeline_path)
    checks = target.checks(spec)
    if check_images:
        return checks + preflight.image_checks(spec)
    return checks + [Check("images", preflight.UNCHECKED, "left out (--no-image-check)")]


def _stop_on_failed_checks(target: Target, checks: list[Check], warn: Warn) -> None:
    for check in checks:
        if check.status in (preflight.WARNING, preflight.UNCHECKED):
            warn(f"{check.item}: {check.detail}")
    if preflight.failures(checks):
        raise PreflightError(preflight.failure_message(target.platform, checks))


def default_name(cron_expression: str = "") -> str:
    from kic.pipeline_names import TRAINING_PIPELINE_NAME

    if cron_expression:
        return f"{TRAINING_PIPELINE_NAME} ({cron_expression})"
    return f"{TRAINING_PIPELINE_NAME} {datetime.datetime.now():%Y-%m-%d %H-%M-%S}"


def compile_for(target: str, directory: str, machines: Mapping[str, Any] | None = None) -> str:
    """The pipeline compiled for ``target`` ("kfp" or "vertex") into
    ``directory``, with train's ``machines`` (the values of
    kic.parameters.TRAIN_MACHINE_PARAMETERS) compiled in: the one place where
    submit and schedule compile."""
    from kic.orchestration import compile as kic_compile
    from kic.pipelines.placement import ClusterOptions

    cluster = ClusterOptions(target=target, **(machines or {}))
    return kic_compile.compile_pipeline(os.path.join(directory, f"pipeline-{target}.yaml"), target, cluster)


def split_train_machines(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` as (run arguments, train's machines): on a cluster the
    machines are compiled into the pipeline, not sent with the run."""
    machines = {name: value for name, value in values.items() if name in parameters.TRAIN_MACHINE_PARAMETERS}
    return {name: value for name, value in values.items() if name not in machines}, machines


def check_parameters(layers: Iterable[Mapping[str, Any]], target: str, warn: Warn = print) -> dict[str, Any]:
    """The front door for a run on a cluster ``target`` ("kfp" or "vertex";
    see the module docstring), with that target's defaults (train asks for a
    GPU); raises ParameterError with every problem."""
    values = parameters.resolve(*layers, reachability=GcsLookups(warn), target=target)
    for name in parameters.LOCATIONS:
        value = values[name]
        if value and not storage.is_remote(value) and os.path.exists(value):
            warn(f"{name}={value!r} is a path on this machine; the pipeline reads it inside its containers, "
                 "where it must exist too (nothing is uploaded): use a gs:// or s3:// URI or a mounted volume")
    return values


class GcsLookups:
    """Which URIs the front door looks up for a cluster: gs:// and s3:// URIs
    that this machine can read. Each one it cannot read is a warning, not a
    problem (a cluster's MinIO, say, is often reachable from its pods only)."""

    def __init__(self, warn: Warn) -> None:
        self._warn = warn
        self._unreadable_buckets: set[str] = set()
        # Schemes with no credentials or no connection here: nothing on that store can be looked up.
        self._no_access: set[str] = set()

    def __call__(self, uri: str) -> bool:
        scheme = storage.scheme(uri)
        if not scheme or scheme in self._no_access:
            return False
        bucket = scheme + uri[len(scheme):].partition("/")[0]
        if bucket in self._unreadable_buckets:
            return False
        try:
            storage.exists(uri)
        except storage.StoragePermissionError as error:
            self._unreadable_buckets.add(bucket)
            self._warn(f"{bucket} cannot be read from this machine, so its URIs are checked on the cluster, by "
                       f"the pipeline's validate step ({error})")
            return False
        except storage.StorageError as error:
            self._no_access.add(scheme)
            store = "GCS" if scheme == storage.GCS_SCHEME else "S3"
            self._warn(f"{scheme} URIs are checked on the cluster, by the pipeline's validate step: {store} cannot be "
                       f"reached from here ({error})")
            return False
        return True


def pipeline_inputs(path: str) -> tuple[dict[str, Any], list[Problem]]:
    """The run parameters of the compiled pipeline at ``path`` (name -> its IR definition)."""
    import yaml

    try:
        spec = preflight.load_spec(path)
    except (OSError, yaml.YAMLError) as error:
        return {}, [Problem("--pipeline", path, f"a compiled pipeline (YAML): {error}")]
    inputs = (spec.get("root") or {}).get("inputDefinitions", {}).get("parameters")
    if not isinstance(inputs, dict):
        return {}, [Problem("--pipeline", path, "a compiled pipeline (YAML): it has no root.inputDefinitions")]
    return inputs, []


def pipeline_problems(path: str, values: Mapping[str, Any]) -> list[Problem]:
    """Whether ``path`` is a compiled pipeline that takes every parameter sent."""
    inputs, found = pipeline_inputs(path)
    if found:
        return found
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        return [Problem("--pipeline", path, f"does not take {', '.join(unknown)}: compiled by another kic version? "
                                            "Recompile it with `kic compile`")]
    return []


def train_machine_problems(target: str, machines: Mapping[str, Any]) -> list[Problem]:
    """What the platform would refuse in train's machines, as they would be compiled in."""
    from kic.pipelines.placement import ClusterOptions

    try:
        ClusterOptions(target=target, **machines)
    except ParameterError as error:
        return error.problems
    return []


def _given(layers: Iterable[Mapping[str, Any]]) -> set[str]:
    return {name for layer in layers for name in layer}


def _checked(target: Target, layers: Iterable[Mapping[str, Any]], problems: Iterable[Problem],
             cron_expression: str | None, pipeline: str, warn: Warn) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run arguments and train's machines to compile in (none when ``pipeline`` is given)."""
    layers = list(layers)
    found = list(problems) + target.problems()
    if cron_expression is not None:
        found += cron.problems(cron_expression, target.cron_dialect)
    values: dict[str, Any] = {}
    try:
        values = check_parameters(layers, target.compile_target, warn)
    except ParameterError as error:
        found += error.problems
    arguments, machines = split_train_machines(values)
    if values and not pipeline:
        found += train_machine_problems(target.compile_target, machines)
    if pipeline and values:
        inputs, unreadable = pipeline_inputs(pipeline)
        found += unreadable
        if not unreadable:
            # A pipeline that takes train's machines at run time gets them; one that has them compiled in
            # cannot be told otherwise.
            arguments.update({name: value for name, value in machines.items() if name in inputs})
            fixed = sorted((_given(layers) & set(machines)) - set(inputs))
            if fixed:
                found.append(Problem("--pipeline", pipeline, f"has train's machines compiled in, so it cannot take "
                                                             f"{', '.join(fixed)}: recompile it (kic compile "
                                                             "--accelerator-count ...), or leave out --pipeline "
                                                             "and kic compiles them in"))
            found += pipeline_problems(pipeline, arguments)
        machines = {}
    if found:
        raise ParameterError(found)
    return arguments, machines


@contextlib.contextmanager
def _pipeline_file(target: Target, pipeline: str, machines: Mapping[str, Any]) -> Iterator[str]:
    """The pipeline to send: the one given, or one compiled for the target, with ``machines``, into a
    temporary folder."""
    if pipeline:
        yield pipeline
        return
    with tempfile.TemporaryDirectory(prefix="kic-pipeline-") as folder:
        yield compile_for(target.compile_target, folder, machines)
