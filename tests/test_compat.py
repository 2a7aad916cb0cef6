"""kic.compat, the one home of kic's reliances on private internals: each
private name still exists with the signature kic calls it with, the installed
releases are those it was checked on, a release it was not checked on is
refused or warned about, and each workaround does what its callers rely on
(the multi-worker patch on a real strategy, the weights request without a
download, the interceptions limited to their thread and undone)."""

from __future__ import annotations

import ast
import inspect
import pathlib
import sys
import threading
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer
from keras.src.utils import file_utils

from kic import compat
from kic.training import distribution

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _parameters(function) -> list[tuple[str, object]]:
    return [(name, parameter.default) for name, parameter in inspect.signature(function).parameters.items()]


# --------------------------------------------------------------------------- the private names


def test_keras_private_names_have_the_signatures_kic_calls():
    from keras.src.applications import efficientnet
    from keras.src.backend import config

    empty = inspect.Parameter.empty
    assert _parameters(trainer.reduce_per_replica) == [("values", empty), ("strategy", empty), ("reduction", empty)]
    assert _parameters(trainer._collective_all_reduce_multi_worker) == [("strategy", empty)]
    assert _parameters(keras.Model._maybe_symbolic_build) == [("self", empty), ("iterator", None),
                                                              ("data_batch", None)]
    get_file = dict(_parameters(file_utils.get_file))
    assert {name: get_file.get(name, "missing") for name in ("fname", "origin", "cache_subdir", "file_hash")} == {
        "fname": None, "origin": None, "cache_subdir": "datasets", "file_hash": None}
    assert _parameters(config.keras_home) == []
    assert _parameters(keras.layers.Layer._flatten_layers) == [("self", empty), ("include_self", True),
                                                               ("recursive", True)]
    assert len(efficientnet.IMAGENET_STDDEV_RGB) == 3 and all(0 < std < 1 for std in efficientnet.IMAGENET_STDDEV_RGB)


def test_kfp_and_google_cloud_private_names_have_the_signatures_kic_calls():
    import requests
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs
    from kfp.local import executor_input_utils
    from kfp_server_api import HealthzServiceApi

    assert _parameters(executor_input_utils.get_local_pipeline_resource_name) == [
        ("pipeline_name", inspect.Parameter.empty)]
    assert "_preload_content" in inspect.getsource(HealthzServiceApi.healthz_service_get_healthz_with_http_info)
    client = gcs.Client(credentials=AnonymousCredentials(), project="compat")
    assert isinstance(client._http, requests.Session)


def test_every_registered_backbone_fetches_its_weights_through_the_intercepted_get_file():
    """Through ``file_utils.get_file``, looked up when called, in its own module or (ResNetV2) another's."""
    from kic.model.backbone_registry import REGISTRY

    modules = {getattr(keras.applications, backbone.constructor).__module__ for name, backbone in REGISTRY.items()
               if name != "tiny_test_net"}  # tests/tiny_backbone.py's, registered for the session once a test asks
    fetching = {name for name in modules if hasattr(sys.modules[name], "file_utils")}
    assert modules - fetching == {"keras.src.applications.resnet_v2"}
    assert sys.modules["keras.src.applications.resnet_v2"].resnet.file_utils is file_utils
    for name in fetching:
        assert sys.modules[name].file_utils is file_utils, name
    assert [name for name in sys.modules if name.startswith("keras.src.applications.")
            and hasattr(sys.modules[name], "get_file")] == []


def _python_sources() -> dict[str, ast.Module]:
    return {str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
            for folder in ("kic", "components", "pipelines") for path in sorted((ROOT / folder).rglob("*.py"))}


def _private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def test_no_module_but_compat_reaches_into_another_packages_private_names():
    sources = _python_sources()
    # A private name kic defines itself (a function, a module's global, a self._attribute) is kic's own.
    own = {node.name for tree in sources.values() for node in ast.walk(tree)
           if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    own |= {node.attr for tree in sources.values() for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
    own |= {node.id for tree in sources.values() for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    found = []
    for path, tree in sources.items():
        if path == "kic/compat.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path}:{node.lineno} import {module}" for module in modules
                      if _private(module) or module.startswith(PRIVATE_PACKAGES)]
    assert found == []


PRIVATE_PACKAGES = ("keras.src", "tensorflow.python", "kfp.local.")  # below the public names


# --------------------------------------------------------------------------- the version check


def test_the_installed_releases_are_the_ones_every_refusing_reliance_was_checked_on():
    # setup.py bounds what a refusing reliance needs to the releases it was checked on. A warning one may
    # meet a newer release (google-cloud-storage is not bounded): the signature tests above say whether its
    # private names still hold there.
    refusing = [reliance for reliance in compat.RELIANCES if reliance.outside == compat.REFUSE]
    assert refusing and {reliance.name: compat.unchecked_releases(reliance) for reliance in refusing} == {
        reliance.name: [] for reliance in refusing}
    for reliance in compat.RELIANCES:
        assert reliance.outside in (compat.REFUSE, compat.WARN) and reliance.works_around and reliance.uses


def _reliance(name: str, outside: str, **checked: tuple[str, ...]) -> compat.Reliance:
    return compat.Reliance(name=name, uses=("keras.src.example",), works_around="example#1", checked=checked,
                           outside=outside, risk="the example goes wrong")


def test_a_release_not_checked_is_refused_where_guessing_could_corrupt_results():
    installed = compat.installed_version("keras")
    same_minor = _reliance("same minor", compat.REFUSE, keras=(".".join(installed.split(".")[:2]) + ".99",))
    compat.require(same_minor)  # a patch release counts as checked
    refused = _reliance("refused", compat.REFUSE, keras=("2.0.0",))
    with pytest.raises(compat.UncheckedVersionError, match=rf"keras {installed}, checked on 2\.0\.0.*goes wrong"):
        compat.require(refused)
    with pytest.raises(compat.UncheckedVersionError):  # every time, not only the first
        compat.require(refused)
    with pytest.raises(compat.UncheckedVersionError, match="not installed"):
        compat.require(_reliance("absent", compat.REFUSE, **{"no-such-distribution": ("1.0",)}))


def test_a_release_not_checked_is_warned_about_once_where_only_a_feature_is_lost():
    warned = _reliance("warned", compat.WARN, keras=("2.0.0",))
    with pytest.warns(compat.UncheckedVersionWarning, match="warned.*checked on 2.0.0"):
        compat.require(warned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.require(warned)


# --------------------------------------------------------------------------- Keras: multi-worker training


@pytest.fixture
def multi_worker_like(monkeypatch):
    """A real one-device MirroredStrategy that Keras' trainer takes for a
    multi-worker one, and Keras' own reduce_per_replica restored afterwards."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    monkeypatch.setattr(trainer, "_collective_all_reduce_multi_worker", lambda given: given is strategy)
    monkeypatch.setattr(trainer, "reduce_per_replica", trainer.reduce_per_replica)
    return strategy


def _fit(strategy, *, patched: bool) -> keras.callbacks.History:
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros")])
        model.compile(keras.optimizers.SGD(learning_rate=0.0), "mse", metrics=["mae"])
    if patched:
        distribution.fix_keras_for_multi_worker(model)
    data = tf.data.Dataset.from_tensor_slices((np.ones((8, 3), "float32"), np.ones((8, 2), "float32"))).batch(4)
    return model.fit(data, epochs=1, verbose=0, shuffle=False)


def test_keras_still_fails_on_scalar_logs_under_a_multi_worker_strategy(multi_worker_like):
    """The upstream bug the patch works around (tensorflow/tensorflow#72388): should this stop failing,
    the patch may be unnecessary on this release."""
    with pytest.raises(ValueError, match="Invalid reduction dimension 0 for input with 0 dimensions"):
        _fit(multi_worker_like, patched=False)


def test_the_multi_worker_patch_lets_fit_run_and_averages_each_scalar_log(multi_worker_like):
    history = _fit(multi_worker_like, patched=True)
    # Zero weights, unchanged (learning rate 0), targets of 1: every step's loss and error is 1.
    assert history.history == {"loss": [pytest.approx(1.0)], "mae": [pytest.approx(1.0)]}
    installed = trainer.reduce_per_replica
    assert getattr(installed, "kic_scalar_logs", False)
    compat.install_scalar_log_reduction()  # once per process: not wrapped twice
    assert trainer.reduce_per_replica is installed


def test_the_replacement_is_keras_own_reduction_everywhere_but_for_multi_worker_scalars(multi_worker_like):
    keras_reduce = trainer.reduce_per_replica
    replacement = compat.scalar_log_reduction(keras_reduce)
    values = multi_worker_like.run(lambda: {"loss": tf.constant(2.0), "batch": tf.constant([1.0, 3.0])})
    reduced = replacement(values, multi_worker_like, "auto")
    assert float(reduced["loss"]) == 2.0
    np.testing.assert_array_equal(reduced["batch"], keras_reduce({"batch": values["batch"]}, multi_worker_like,
                                                                 "auto")["batch"])
    one_device = tf.distribute.get_strategy()  # not multi-worker: Keras' own, scalars included
    plain = {"loss": tf.constant(2.0), "batch": tf.constant([1.0, 3.0])}
    for reduction in ("auto", "first", "concat"):
        expected = keras_reduce(plain, one_device, reduction)
        actual = replacement(plain, one_device, reduction)
        for key in plain:
            np.testing.assert_array_equal(actual[key], expected[key])


# --------------------------------------------------------------------------- Keras: ImageNet weights


def test_a_real_application_names_its_weights_without_downloading_them(monkeypatch):
    from keras.src.applications import mobilenet_v2

    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", "http://127.0.0.1:9/refused/")  # a download would fail
    asked = compat.imagenet_weights_request(keras.applications.MobileNetV2, alpha=0.35, include_top=False,
                                            input_shape=(96, 96, 3))
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    assert asked == compat.WeightsRequest(fname=name, origin=f"http://127.0.0.1:9/refused/{name}",
                                          cache_subdir="models", file_hash=None)
    assert file_utils.get_file is _ORIGINAL_GET_FILE


_ORIGINAL_GET_FILE = file_utils.get_file


def test_only_the_asking_thread_is_intercepted_and_get_file_is_restored(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "cached.txt").write_text("already here")
    others: list = []

    def application(weights, **_):
        # Another thread's get_file, while ours is intercepted: Keras' own (the file is cached: no download).
        other = threading.Thread(target=lambda: others.append(
            file_utils.get_file("cached.txt", origin="http://127.0.0.1:9/cached.txt", cache_dir=str(tmp_path))))
        other.start()
        other.join()
        file_utils.get_file("w.h5", "http://weights.example/w.h5", cache_subdir="models", file_hash="abc")
        raise AssertionError("get_file was not intercepted")

    application.__module__ = __name__  # this module fetches through file_utils.get_file, as Keras' do
    asked = compat.imagenet_weights_request(application)
    assert asked == compat.WeightsRequest(fname="w.h5", origin="http://weights.example/w.h5", cache_subdir="models",
                                          file_hash="abc")
    assert others == [str(tmp_path / "datasets" / "cached.txt")]
    assert file_utils.get_file is _ORIGINAL_GET_FILE


def test_an_application_that_would_bypass_the_interception_is_refused_before_it_is_built(monkeypatch):
    bypassing = types.ModuleType("bypassing_application")
    bypassing.get_file = file_utils.get_file  # `from ... import get_file`: the interception would not see it
    monkeypatch.setitem(sys.modules, bypassing.__name__, bypassing)
    built = []

    def application(**arguments):
        built.append(arguments)

    application.__module__ = bypassing.__name__
    with pytest.raises(compat.UncheckedVersionError, match="would download them"):
        compat.imagenet_weights_request(application)
    assert built == []


# --------------------------------------------------------------------------- Keras: layers


def test_all_layers_reaches_into_nested_models():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="inner_dense")], name="inner")
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(2, name="outer_dense")])
    found = [layer.name for layer in compat.all_layers(outer) if not isinstance(layer, keras.layers.InputLayer)]
    assert found == ["inner", "inner_dense", "outer_dense"]


# --------------------------------------------------------------------------- google-cloud-storage and kfp


def test_the_gcs_client_gets_the_wider_connection_pool():
    import requests.adapters
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(credentials=AnonymousCredentials(), project="compat")
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=64)
    compat.widen_connection_pool(client, adapter)
    assert client._http.get_adapter("https://storage.googleapis.com/b/o") is adapter
    assert client._http.get_adapter("http://127.0.0.1:9000/b/o") is adapter


def test_kfp_local_run_names_are_recorded_for_this_thread_only_and_the_name_function_restored():
    from kfp.local import executor_input_utils

    original = executor_input_utils.get_local_pipeline_resource_name
    others: list[str] = []
    with compat.kfp_local_run_names() as names:
        mine = executor_input_utils.get_local_pipeline_resource_name("training-pipeline")
        other = threading.Thread(target=lambda: others.append(
            executor_input_utils.get_local_pipeline_resource_name("other-pipeline")))
        other.start()
        other.join()
    assert names == [mine] and mine.startswith("training-pipeline-")
    assert len(others) == 1 and others[0].startswith("other-pipeline-")
    assert executor_input_utils.get_local_pipeline_resource_name is original


def test_kfp_healthz_keeps_the_release_that_the_public_call_drops():
    import kfp
    from api_standins import RecordingAPI, kubeflow_routes

    with RecordingAPI(kubeflow_routes(tag_name="2.16.0")) as api, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        client = kfp.Client(host=api.endpoint)
        assert compat.kfp_healthz(client)["tag_name"] == "2.16.0"
        # Why it is read raw (kubeflow/pipelines#8833): should kfp keep it one day, this reliance can go.
        assert "tag_name" not in client.get_kfp_healthz().to_dict()
