"""Every reliance of kic on private internals of Keras, kfp and the Google Cloud
client, in one place.

Where no public API does the job, kic uses a private name, and only here. Each
use is a ``Reliance`` below: the private names, the upstream issue it works
around, the versions it was checked on, and what happens on any other version
(the same major.minor as a checked version counts as checked):

* refused (``UncheckedVersionError``) where a wrong guess would corrupt a result
  or download weights unasked: KERAS_MULTI_WORKER, KERAS_WEIGHTS_REQUEST,
  KERAS_EFFICIENTNET_STDDEV, KERAS_ALL_LAYERS;
* a warning (``UncheckedVersionWarning``, once) where only a feature is lost:
  KERAS_HOME, GCS_CONNECTION_POOL, KFP_LOCAL_RUN_NAME, KFP_HEALTHZ.

The check runs at first use: importing this module imports none of those
packages. tests/test_compat.py checks that every private name still exists with
the signature used here. To move to a new release: run it and the slow
multi-worker test (tests/test_distribution.py) there, then add the release to
``checked`` and widen setup.py's bounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import inspect
import json
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kic.errors import UserError

REFUSE, WARN = "refuse", "warn"


@dataclasses.dataclass(frozen=True)
class Reliance:
    name: str
    uses: tuple[str, ...]  # the private names
    works_around: str  # the upstream issue, or why no public API serves
    checked: Mapping[str, tuple[str, ...]]  # distribution -> the releases it was checked on
    outside: str  # REFUSE or WARN, on a release not checked
    risk: str  # what goes wrong on a release where the private names changed


class UncheckedVersionError(UserError, RuntimeError):
    """A private Keras/kfp internal kic needs, on a release it was not checked on, where guessing could
    corrupt a result."""


class UncheckedVersionWarning(UserWarning):
    """A private internal on a release it was not checked on, where only a feature may be lost."""


KERAS_CHECKED, TENSORFLOW_CHECKED = {"keras": ("3.15.1",)}, {"tensorflow": ("2.21.0",)}

KERAS_MULTI_WORKER = Reliance(
    name="Keras fit under MultiWorkerMirroredStrategy",
    uses=("keras.src.backend.tensorflow.trainer.reduce_per_replica (replaced, process-wide)",
          "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker",
          "keras.Model._maybe_symbolic_build (replaced on the one model)"),
    works_around="scalar logs: tensorflow/tensorflow#72388 (Keras 3 averages each step's loss and metrics over "
                 "the workers with strategy.reduce(axis=0): 'Invalid reduction dimension 0 for input with 0 "
                 "dimensions'; closed there as Keras' to fix, no Keras issue found). The first batch: Keras "
                 "all-reduces it with strategy.reduce, which fails for a (pixels, target) tuple ('Attempt to "
                 "convert a value (PerReplica...)'); no upstream issue found",
    checked={**KERAS_CHECKED, **TENSORFLOW_CHECKED}, outside=REFUSE,
    risk="both replace Keras' own code: on another release they could average the logs that early stopping and "
         "checkpoint selection read wrongly, or stop catching the failure")

KERAS_WEIGHTS_REQUEST = Reliance(
    name="where Keras Applications get their ImageNet weights",
    uses=("keras.src.utils.file_utils.get_file (intercepted, in the asking thread only, while an application "
          "is built)",),
    works_around="Keras names an application's weights file, origin and hash only by downloading it; no public "
                 "API, no upstream issue found",
    checked=KERAS_CHECKED, outside=REFUSE,
    risk="should the interception stop catching the request, validation would download the weights (up to "
         "hundreds of MB) instead of asking where they are")

KERAS_HOME = Reliance(
    name="the Keras cache folder", uses=("keras.src.backend.config.keras_home",),
    works_around="Keras has no public accessor for its home folder; no upstream issue found",
    checked=KERAS_CHECKED, outside=WARN,
    risk="a moved accessor falls back to Keras' documented rule (KERAS_HOME, else ~/.keras); only the cache "
         "path kic names could differ")

KERAS_EFFICIENTNET_STDDEV = Reliance(
    name="EfficientNet's ImageNet input rescaling",
    uses=("keras.src.applications.efficientnet.IMAGENET_STDDEV_RGB",),
    works_around="tensorflow/tensorflow#49930: Keras' EfficientNet normalises by the variance where the original "
                 "divides by the standard deviation, and corrects it with a Rescaling(1/sqrt(std)) only when it "
                 "loads ImageNet weights; kic gives every EfficientNet that layer (kic.model.backbones)",
    checked=KERAS_CHECKED, outside=REFUSE,
    risk="should Keras change that correction, a model built without ImageNet weights would compute other "
         "features than one built with them, silently")

KERAS_ALL_LAYERS = Reliance(
    name="every layer of a model, nested ones included", uses=("keras.layers.Layer._flatten_layers",),
    works_around="Keras 3 has no public recursive list of a model's layers (Model.layers is one level); no "
                 "upstream issue found",
    checked=KERAS_CHECKED, outside=REFUSE,
    risk="kic.training.precision decides from it whether a model must be rebuilt in another precision: a list "
         "missing nested layers would leave them in the wrong dtype policy, silently")

GCS_CONNECTION_POOL = Reliance(
    name="the GCS client's connection pool size",
    uses=("google.cloud.client.Client._http (its requests.Session's mount)",),
    works_around="googleapis/python-storage#253: the client's session keeps 10 connections per host and has no "
                 "setting for it; the maintainers' answer is to mount a larger adapter on client._http",
    checked={"google-cloud-storage": ("3.17.2",), "google-cloud-core": ("2.8.0",)}, outside=WARN,
    risk="parallel reads and writes share 10 connections (slower; urllib3 warns 'Connection pool is full')")

KFP_LOCAL_RUN_NAME = Reliance(
    name="the folder kfp.local runs a pipeline in",
    uses=("kfp.local.executor_input_utils.get_local_pipeline_resource_name (wrapped, recording in the calling "
          "thread only, while a pipeline runs)",),
    works_around="kfp.local neither returns nor logs a run's folder; no upstream issue found",
    checked={"kfp": ("2.17.3",)}, outside=WARN,
    risk="kic.orchestration.local_run falls back to the one folder that appeared under the pipeline root "
         "during the run, and refuses to guess between several")

KFP_HEALTHZ = Reliance(
    name="the Kubeflow Pipelines backend's release (healthz tag_name)",
    uses=("kfp.Client._healthz_api",
          "kfp_server_api.HealthzServiceApi.healthz_service_get_healthz(_preload_content=False)"),
    works_around="kubeflow/pipelines#8833: the v2beta1 GetHealthzResponse message models only multi_user, so "
                 "kfp.Client.get_kfp_healthz() drops the tag_name the server sends",
    checked={"kfp": ("2.17.3",), "kfp-server-api": ("2.17.3",)}, outside=WARN,
    risk="the backend's release goes unchecked before a submission (the check says so)")

RELIANCES = (KERAS_MULTI_WORKER, KERAS_WEIGHTS_REQUEST, KERAS_HOME, KERAS_EFFICIENTNET_STDDEV, KERAS_ALL_LAYERS,
             GCS_CONNECTION_POOL, KFP_LOCAL_RUN_NAME, KFP_HEALTHZ)


# --------------------------------------------------------------------------- the version check


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unchecked_releases(reliance: Reliance) -> list[str]:
    """The installed releases that ``reliance`` was not checked on (same major.minor counts as checked)."""
    from packaging.version import InvalidVersion, Version

    def minor(text: str) -> tuple[int, ...] | None:
        try:
            return Version(text).release[:2]
        except InvalidVersion:
            return None

    found = []
    for distribution, checked in reliance.checked.items():
        version = installed_version(distribution)
        if version is None or minor(version) not in {minor(release) for release in checked}:
            found.append(f"{distribution} {version or '(not installed)'}, checked on {', '.join(checked)}")
    return found


_verified: set[str] = set()
_verified_lock = threading.Lock()


def require(reliance: Reliance) -> None:
    """Refuses, or warns once, where ``reliance`` meets releases it was not checked on; asked once per process."""
    with _verified_lock:
        if reliance.name in _verified:
            return
        unchecked = unchecked_releases(reliance)
        if unchecked and reliance.outside == REFUSE:
            raise UncheckedVersionError(
                f"kic relies on private internals for {reliance.name} ({'; '.join(reliance.uses)}), checked only "
                f"on other releases: {'; '.join(unchecked)}. Unchecked, {reliance.risk}. Install the releases "
                "setup.py allows, or check the workaround on these (tests/test_compat.py) and add them to its "
                "checked releases in kic/compat.py")
        if unchecked:
            warnings.warn(f"kic: {reliance.name} relies on private internals checked on other releases "
                          f"({'; '.join(unchecked)}); where they changed, {reliance.risk}",
                          UncheckedVersionWarning, stacklevel=3)
        _verified.add(reliance.name)


def _lost(reliance: Reliance, what: str) -> None:
    warnings.warn(f"kic: {reliance.name}: {what}; {reliance.risk}", UncheckedVersionWarning, stacklevel=3)


# --------------------------------------------------------------------------- Keras: multi-worker training


def patch_keras_for_multi_worker(model) -> None:
    """Lets ``model`` (compiled in a MultiWorkerMirroredStrategy's scope) fit:
    it builds from this worker's part of the first batch, and every scalar log
    is averaged over the workers as a scalar (see KERAS_MULTI_WORKER)."""
    require(KERAS_MULTI_WORKER)
    build_from_local_batch(model)
    install_scalar_log_reduction()


def build_from_local_batch(model) -> None:
    """Before its first step, fit builds the model, metrics and optimizer from
    one batch, got by all-reducing the first distributed batch, which
    MultiWorkerMirroredStrategy cannot do for a tuple. Only the batch's shapes
    matter, so this replica's own part of it does as well."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    build = model._maybe_symbolic_build

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build_from_local_batch(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:  # as Keras does: the first batch
                data_batch = tf.nest.map_structure(local_part, next(batches))
                break
        return build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_local_batch


def scalar_log_reduction(keras_reduce: Callable) -> Callable:
    """Keras' ``reduce_per_replica`` (``keras_reduce``), except that under a
    multi-worker strategy a scalar is averaged as a scalar (axis None) rather
    than along an axis 0 it does not have; every other case is Keras' own."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(strategy):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            # One replica per worker: a plain tensor, not a PerReplica.
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    reduce_per_replica.kic_scalar_logs = True
    return reduce_per_replica


_keras_reduce_lock = threading.Lock()


def install_scalar_log_reduction() -> None:
    """Keras' trainer calls its module's ``reduce_per_replica`` when it traces
    a step, so that name is replaced, once per process; the replacement is
    Keras' own everywhere but under a multi-worker strategy."""
    from keras.src.backend.tensorflow import trainer

    with _keras_reduce_lock:
        if not getattr(trainer.reduce_per_replica, "kic_scalar_logs", False):
            trainer.reduce_per_replica = scalar_log_reduction(trainer.reduce_per_replica)


# --------------------------------------------------------------------------- Keras: ImageNet weights


@dataclasses.dataclass(frozen=True)
class WeightsRequest:
    """What an application asks Keras' get_file for."""

    fname: str | None
    origin: str
    cache_subdir: str
    file_hash: str | None


class _Asked(Exception):
    pass


_get_file_lock = threading.Lock()


def imagenet_weights_request(constructor: Callable, **arguments: Any) -> WeightsRequest | None:
    """What ``constructor(weights='imagenet', **arguments)`` (a
    keras.applications function) asks Keras' get_file for, without
    downloading anything: get_file is intercepted for this thread alone while
    the network is built, and restored after. None: it asked for nothing."""
    require(KERAS_WEIGHTS_REQUEST)
    from keras.src.utils import file_utils

    # Keras' applications call file_utils.get_file through the module (some through another application's
    # module: ResNetV2 builds with resnet's code); one that imported the function itself would not be intercepted.
    bypassing = sorted(name for name, module in list(sys.modules.items())
                       if (name == constructor.__module__ or name.startswith("keras.src.applications."))
                       and hasattr(module, "get_file"))
    if bypassing:
        raise UncheckedVersionError(
            f"{', '.join(bypassing)} hold get_file itself, not through keras.src.utils.file_utils: asking where "
            f"{constructor.__name__}'s ImageNet weights are would download them ({KERAS_WEIGHTS_REQUEST.name})")
    asking, asked = threading.get_ident(), {}
    with _get_file_lock:
        original = file_utils.get_file

        def intercept(*args, **kwargs):
            if threading.get_ident() != asking:  # another thread's download, as it would be without us
                return original(*args, **kwargs)
            call = inspect.signature(original).bind(*args, **kwargs)
            call.apply_defaults()
            asked.update(call.arguments)
            raise _Asked

        file_utils.get_file = intercept
        try:
            constructor(weights="imagenet", **arguments)
        except _Asked:
            pass
        finally:
            if file_utils.get_file is intercept:
                file_utils.get_file = original
    if not asked.get("origin"):
        return None
    return WeightsRequest(fname=asked["fname"], origin=asked["origin"], cache_subdir=asked["cache_subdir"],
                          file_hash=asked["file_hash"])


def keras_home() -> str:
    """Keras' home folder (its cache of weights is below it), as Keras itself reads it."""
    require(KERAS_HOME)
    try:
        from keras.src.backend.config import keras_home as private_keras_home
    except ImportError:
        _lost(KERAS_HOME, "keras.src.backend.config.keras_home is gone")
        return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return private_keras_home()


def efficientnet_imagenet_stddev_rgb() -> tuple[float, float, float]:
    """The standard deviations by which Keras' ImageNet EfficientNet (V1) rescales its normalised input."""
    require(KERAS_EFFICIENTNET_STDDEV)
    from keras.src.applications.efficientnet import IMAGENET_STDDEV_RGB

    return tuple(IMAGENET_STDDEV_RGB)


# --------------------------------------------------------------------------- Keras: layers


def all_layers(model) -> list:
    """Every layer inside ``model``, nested models' layers included (not ``model`` itself)."""
    require(KERAS_ALL_LAYERS)
    return list(model._flatten_layers(include_self=False, recursive=True))


# --------------------------------------------------------------------------- google-cloud-storage


def widen_connection_pool(client, adapter) -> None:
    """Mounts ``adapter`` (a requests HTTPAdapter) on the GCS ``client``'s session, for http and https."""
    require(GCS_CONNECTION_POOL)
    session = getattr(client, "_http", None)
    if not callable(getattr(session, "mount", None)):
        _lost(GCS_CONNECTION_POOL, "the client's _http has no mount")
        return
    session.mount("https://", adapter)
    session.mount("http://", adapter)


# --------------------------------------------------------------------------- kfp


_run_name_lock = threading.RLock()


@contextlib.contextmanager
def kfp_local_run_names() -> Iterator[list[str]]:
    """The names kfp.local gives the pipeline runs this thread starts inside
    the block (each is the run's folder under the pipeline root), in order.
    kfp.local runs one pipeline at a time in a process, so blocks in several
    threads wait for each other. Empty where kfp.local names its runs elsewhere."""
    require(KFP_LOCAL_RUN_NAME)
    from kfp.local import executor_input_utils

    names: list[str] = []
    if not callable(getattr(executor_input_utils, "get_local_pipeline_resource_name", None)):
        _lost(KFP_LOCAL_RUN_NAME, "kfp.local.executor_input_utils.get_local_pipeline_resource_name is gone")
        yield names
        return
    recording = threading.get_ident()
    with _run_name_lock:
        naming = executor_input_utils.get_local_pipeline_resource_name

        def name_and_record(pipeline_name: str) -> str:
            name = naming(pipeline_name)
            if threading.get_ident() == recording:
                names.append(name)
            return name

        executor_input_utils.get_local_pipeline_resource_name = name_and_record
        try:
            yield names
        finally:
            if executor_input_utils.get_local_pipeline_resource_name is name_and_record:
                executor_input_utils.get_local_pipeline_resource_name = naming


def kfp_healthz(client) -> dict:
    """The backend's healthz answer as the server sent it (with tag_name, its
    release); {} where this kfp cannot read it raw. Raises what the call
    raises (kfp_server_api's ApiException; ValueError for an answer that is
    not JSON)."""
    require(KFP_HEALTHZ)
    get = getattr(getattr(client, "_healthz_api", None), "healthz_service_get_healthz", None)
    if get is None:
        _lost(KFP_HEALTHZ, "kfp.Client has no _healthz_api.healthz_service_get_healthz")
        return {}
    return json.loads(get(_preload_content=False).data)
