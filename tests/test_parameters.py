"""The validation front door: every pipeline parameter, every rule, every problem at once."""

import http.server
import os
import threading

import pytest

from kic import artifacts, parameters, storage
from kic.errors import ParameterError
from kic.model import backbone_registry, weights


def names(error: ParameterError) -> set[str]:
    return {problem.name for problem in error.problems}


def test_the_defaults_with_a_source_are_valid(tmp_path):
    values = parameters.resolve({"data_source": str(tmp_path), "pretrained_weights": "none"})
    assert values == {**parameters.defaults(), "data_source": str(tmp_path), "pretrained_weights": "none"}


def test_strings_are_typed_and_the_references_aliases_accepted(tmp_path):
    values = parameters.resolve({"data_source": str(tmp_path), "pretrained_weights": "none", "epochs": "4",
                                 "augmentation": "true", "eps": "1e-6", "train_only_top_layer": "True",
                                 "gate_minimum": "0.5", "top_k": "3"})
    assert (values["epochs"], values["augmentation"], values["epsilon"], values["train_only_on_top_layer"],
            values["gate_minimum"], values["top_k"]) == (4, True, 1e-6, True, 0.5, 3)


def test_every_kind_of_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ParameterError) as error:
        parameters.resolve({
            "data_source": str(tmp_path / "missing"), "epochs": "three", "learning_rate": 2, "batch_siz": 8,
            "validation_fraction": 0.0, "backbone": "resnet5O", "gate_metric": "auc", "tflite": "int4", "top_k": 0,
            "max_regression": -0.1, "batch_predict_format": "xml", "max_rejected_fraction": 1.5,
            "base_model_uri": str(tmp_path / "no-model"), "image_short_side": -1})
    assert names(error.value) == {
        "data_source", "epochs", "learning_rate", "batch_siz", "validation_fraction", "backbone", "gate_metric",
        "tflite", "top_k", "max_regression", "batch_predict_format", "max_rejected_fraction", "base_model_uri",
        "image_short_side"}
    message = str(error.value)
    assert "did you mean 'batch_size'" in message and "expected an integer" in message


def test_a_subset_is_checked_by_the_rules_it_touches():
    assert parameters.validate({"epochs": "7", "top_k": 3}) == {"epochs": 7, "top_k": 3}  # no data_source needed
    with pytest.raises(ParameterError) as error:
        parameters.validate({"eval_metric": "auc"})  # binary_mode takes its default, False
    assert names(error.value) == {"eval_metric"}


# --------------------------------------------------------------------------- data and splits


def test_split_fractions(tmp_path):
    source = {"data_source": str(tmp_path), "pretrained_weights": "none"}
    with pytest.raises(ParameterError, match="must leave training images"):
        parameters.resolve(source, {"validation_fraction": 0.5, "test_fraction": 0.6})
    with pytest.raises(ParameterError, match="training picks its best epoch on validation images"):
        parameters.resolve(source, {"validation_fraction": 0.0})
    # With its own source a split's fraction is unused, so it may be anything in range.
    parameters.resolve(source, {"validation_fraction": 0.0, "validation_source": str(tmp_path)})
    parameters.resolve(source, {"validation_fraction": 0.9, "test_fraction": 0.5, "test_source": str(tmp_path)})


def test_sources_must_exist_locally_and_on_gcs(tmp_path, gcs_emulator):
    bucket = gcs_emulator.new_bucket()
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"x")
    storage.write_text(f"{bucket}/list.csv", "uri,label\nimages/cat/1.jpg,cat\n")
    parameters.validate({"data_source": f"{bucket}/images", "validation_source": f"{bucket}/list.csv",
                         "batch_predict_source": f"{bucket}/images/cat/1.jpg"})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"data_source": f"{bucket}/imagez", "validation_source": str(tmp_path / "v.csv"),
                             "test_source": "tfds:", "batch_predict_source": str(tmp_path / "new"),
                             "tfds_data_dir": str(tmp_path / "tfds")})
    problems = {problem.name: problem.expected for problem in error.value.problems}
    assert problems == {"data_source": "no such folder, gs:// or s3:// prefix", "validation_source": "no such manifest",
                        "test_source": "tfds:NAME or tfds:NAME:CONFIG",
                        "batch_predict_source": "no such folder, gs:// or s3:// prefix",
                        "tfds_data_dir": "no such folder"}


def test_a_source_that_cannot_be_looked_at_is_not_called_missing(tmp_path, gcs_emulator, flaky_gcs):
    bucket = gcs_emulator.new_bucket()
    flaky_gcs.fail_every, flaky_gcs.fail_status = 1, 403  # the account may not read the bucket
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a local path that cannot be looked at, even by root
    with pytest.raises(ParameterError) as error:
        parameters.validate({"data_source": str(loop), "tfds_data_dir": f"{bucket}/tfds"})
    problems = {problem.name: problem.expected for problem in error.value.problems}
    assert problems["tfds_data_dir"].startswith("cannot be read:") and "permission denied" in problems["tfds_data_dir"]
    assert problems["data_source"].startswith("cannot be read:") and "symbolic links" in problems["data_source"]


def test_reinitialize_top_layer_false_needs_a_model_to_keep_the_top_layer_of(tmp_path):
    for given in ("False", '"False"', "false", False):
        with pytest.raises(ParameterError, match="needs base_model_uri") as error:
            parameters.resolve({"data_source": str(tmp_path), "pretrained_weights": "none",
                                "reinitialize_top_layer": given})
        assert names(error.value) == {"reinitialize_top_layer"}
    values = parameters.validate({"reinitialize_top_layer": "false", "base_model_uri": "gs://b/model.tar.gz"},
                                 reachability=False)
    assert values["reinitialize_top_layer"] == "False"


def _tarball(path, members: dict[str, bytes]) -> str:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    return str(path)


def test_a_savedmodel_only_package_cannot_be_continued_from(tmp_path):
    """The reference algorithm's model.tar.gz: a SavedModel and the label map, no model.keras."""
    reference = _tarball(tmp_path / "model.tar.gz", {"1/saved_model.pb": b"pb", "1/variables/variables.index": b"i",
                                                     artifacts.LABEL_MAP: b'{"daisy": 0}'})
    with pytest.raises(ParameterError, match="SavedModel-only package.*leave base_model_uri empty") as error:
        parameters.validate({"base_model_uri": reference})
    assert names(error.value) == {"base_model_uri"}
    folder = tmp_path / "unpacked"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "saved_model.pb").write_bytes(b"pb")
    (folder / artifacts.MODEL_INFO).write_text("{}")  # an info file is not enough: model.keras is what continues
    with pytest.raises(ParameterError, match="SavedModel-only package"):
        parameters.validate({"base_model_uri": str(folder)})
    kic_package = _tarball(tmp_path / "kic.tar.gz", {"1/saved_model.pb": b"pb", artifacts.MODEL_INFO: b"{}",
                                                     artifacts.KERAS_MODEL: b"k"})
    assert parameters.validate({"base_model_uri": kic_package})["base_model_uri"] == kic_package


def test_without_reachability_only_the_form_is_checked(tmp_path):
    values = {"data_source": str(tmp_path / "elsewhere"), "base_model_uri": "gs://bucket/model.tar.gz",
              "pretrained_weights": "gs://bucket/backbone.weights.h5"}
    assert parameters.validate(values, reachability=False) == values
    with pytest.raises(ParameterError, match="weights-only file"):
        parameters.validate({"pretrained_weights": "model.keras"}, reachability=False)


def test_model_uris_must_be_kic_models(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / artifacts.MODEL_INFO).write_text("{}")
    (tmp_path / "model.tar.gz").write_bytes(b"archive")
    with pytest.raises(ParameterError, match="no model.keras"):  # what train continues from
        parameters.validate({"base_model_uri": str(model_dir)})
    (model_dir / artifacts.KERAS_MODEL).write_bytes(b"keras")
    parameters.validate({"base_model_uri": str(model_dir), "baseline_model_uri": str(tmp_path / "model.tar.gz")})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"base_model_uri": str(tmp_path), "baseline_model_uri": str(tmp_path / "old.tar.gz")})
    assert names(error.value) == {"base_model_uri", "baseline_model_uri"}
    assert "not a kic model" in str(error.value)


def test_the_default_baseline_is_what_latest_names_and_none_turns_it_off(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    parameters.validate({"export_uri": str(exports)})  # the first run: no LATEST yet
    (exports / artifacts.LATEST_POINTER).write_text(str(exports / "run-1") + "\n")
    with pytest.raises(ParameterError) as error:
        parameters.validate({"export_uri": str(exports)})
    assert names(error.value) == {"export_uri"}
    assert "compares with its LATEST" in str(error.value) and "which is not a kic model" in str(error.value)
    for off in ("none", "None"):
        parameters.validate({"export_uri": str(exports), "baseline_model_uri": off})
    (exports / "run-1").mkdir()
    (exports / "run-1" / artifacts.MODEL_INFO).write_text("{}")
    parameters.validate({"export_uri": str(exports)})
    parameters.validate({"allow_removed_classes": "true"})
    with pytest.raises(ParameterError, match="allow_removed_classes"):
        parameters.validate({"allow_removed_classes": "sometimes"})


# --------------------------------------------------------------------------- model and weights


def test_backbone_image_size_and_weights_files(tmp_path):
    (tmp_path / "backbone.weights.h5").write_bytes(b"weights")
    parameters.validate({"backbone": "inception_v3", "image_size": 75,
                         "pretrained_weights": str(tmp_path / "backbone.weights.h5")})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"backbone": "inception_v3", "image_size": 64, "pretrained_weights": "none"})
    assert "at least 75" in str(error.value)
    with pytest.raises(ParameterError, match="no such weights file"):
        parameters.validate({"pretrained_weights": str(tmp_path / "other.weights.h5")})


def test_derived_short_side_follows_the_model():
    cases = [("mobilenet_v2_100_224", 0, 0, 224), ("inception_v3", 0, 0, 299),
             ("mobilenet_v3_small_100_224", 64, 0, 64), ("efficientnet_b7", 0, 0, 600),
             ("mobilenet_v2_100_224", 0, 480, 480)]
    for backbone, image_size, requested, expected in cases:
        assert parameters.derive_short_side(backbone=backbone, image_size=image_size, requested=requested) == expected


class _HeadOk(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 - the http.server hook's name
        self.send_response(200 if self.path.endswith(".h5") else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve_weights_from(monkeypatch, base_url: str) -> None:
    from keras.src.applications import mobilenet_v2

    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", base_url)


def test_imagenet_weights_must_be_cached_or_downloadable(keras_home, monkeypatch):
    small = backbone_registry.resolve("mobilenet_v2_035_96")
    source = weights.imagenet_source(small, 96)
    assert source.origin.endswith("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5")
    assert source.cache_path == str(keras_home / "models" / os.path.basename(source.origin))

    # Nothing cached, and the weights' host refuses connections (loopback port 9): a problem, in seconds.
    _serve_weights_from(monkeypatch, "http://127.0.0.1:9/keras-applications/")
    with pytest.raises(ParameterError) as error:
        parameters.validate({"backbone": small.name, "pretrained_weights": "imagenet"})
    message = str(error.value)
    assert "not in the Keras cache" in message and "127.0.0.1:9" in message and "use 'none'" in message

    # A host that answers: fine.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeadOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _serve_weights_from(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/keras-applications/")
        parameters.validate({"backbone": small.name, "pretrained_weights": "imagenet"})
    finally:
        server.shutdown()

    # Unreachable again, but in the cache: fine, as in an air-gapped cluster with a pre-filled cache.
    _serve_weights_from(monkeypatch, "http://127.0.0.1:9/keras-applications/")
    cached = weights.imagenet_source(small, 96).cache_path
    os.makedirs(os.path.dirname(cached))
    open(cached, "wb").close()
    parameters.validate({"backbone": small.name, "pretrained_weights": "imagenet"})


# --------------------------------------------------------------------------- evaluation and serving


def test_the_gate_metric_must_exist_in_the_mode():
    parameters.validate({"gate_metric": "auc", "binary_mode": True, "eval_metric": "auc"})
    parameters.validate({"gate_metric": "top_3_accuracy", "top_k": 3})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"gate_metric": "auc"})
    assert "multi-class mode" in str(error.value) and "macro_f1" in str(error.value)
    with pytest.raises(ParameterError, match="no model has a log loss of 0"):
        parameters.validate({"gate_metric": "log_loss"})
    parameters.validate({"gate_metric": "log_loss", "gate_minimum": 0.5})
    with pytest.raises(ParameterError, match="finite"):
        parameters.validate({"gate_minimum": float("nan")})


def test_export_and_batch_prediction_options():
    parameters.validate({"tflite": "int8", "top_k": 1, "batch_predict_format": "csv", "export_uri": "gs://b/models"})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"tflite": "int4", "batch_predict_format": "parquet", "export_uri": "gs://"})
    assert names(error.value) == {"tflite", "batch_predict_format", "export_uri"}


def test_a_tf_data_service_is_named_by_its_dispatchers_address():
    parameters.validate({"tf_data_service": "grpc://dispatcher.kubeflow.svc:5050"})
    parameters.validate({"tf_data_service": "10.0.0.7:5050"})
    with pytest.raises(ParameterError, match="grpc://HOST:PORT"):
        parameters.validate({"tf_data_service": "http://dispatcher"})


def test_precision_and_xla_settings():
    assert parameters.validate({"precision": "mixed_bfloat16", "jit_compile": "false"}) == {
        "precision": "mixed_bfloat16", "jit_compile": "false"}
    with pytest.raises(ParameterError) as caught:
        parameters.validate({"precision": "float16", "jit_compile": "yes"})
    assert names(caught.value) == {"precision", "jit_compile"}
    assert "mixed_float16" in str(caught.value) and "auto, true, false" in str(caught.value)


def test_checkpoints_go_to_a_local_folder_or_an_object_store_every_zero_or_more_steps():
    parameters.validate({"checkpoint_uri": "gs://b/runs/checkpoints", "checkpoint_every_steps": 0})
    parameters.validate({"checkpoint_uri": "s3://b/runs/checkpoints", "checkpoint_every_steps": 0})
    parameters.validate({"checkpoint_uri": "minio://mlpipeline/checkpoints", "checkpoint_every_steps": 0})
    parameters.validate({"checkpoint_uri": "/mnt/checkpoints", "checkpoint_every_steps": 500})
    with pytest.raises(ParameterError) as error:
        parameters.validate({"checkpoint_uri": "hdfs://b/c", "checkpoint_every_steps": -1})
    assert names(error.value) == {"checkpoint_uri", "checkpoint_every_steps"}
    with pytest.raises(ParameterError, match="gs://BUCKET/PATH"):
        parameters.validate({"checkpoint_uri": "gs://"})
    with pytest.raises(ParameterError, match="s3://BUCKET/PATH"):
        parameters.validate({"checkpoint_uri": "s3:///"})


# --------------------------------------------------------------------------- Vertex AI Model Registry


PARENT = "projects/my-project/locations/europe-west4/models/1234567890"


def test_model_registry_options():
    parameters.validate({"vertex_model_display_name": "flowers", "vertex_parent_model": PARENT})
    parameters.validate({"vertex_model_display_name": "", "vertex_serving_image": ""})  # no upload, nothing to serve
    parameters.validate({"vertex_model_display_name": "fleurs – l'été",
                         "vertex_serving_image": "europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"})
    for display_name in ("   ", 'say "cheese"', "back\\slash", "two\nlines", "x" * 129):
        with pytest.raises(ParameterError, match="vertex_model_display_name") as error:
            parameters.validate({"vertex_model_display_name": display_name})
        assert names(error.value) == {"vertex_model_display_name"}, display_name
    for parent in ("1234567890", "models/1", "projects/p/locations/l/models/", "projects/p/locations/l/endpoints/1",
                   PARENT + "/versions/2", PARENT + "@2", "projects/p/locations/l/models/a b"):
        with pytest.raises(ParameterError, match="projects/PROJECT/locations/LOCATION/models/MODEL_ID"):
            parameters.validate({"vertex_model_display_name": "flowers", "vertex_parent_model": parent})
    with pytest.raises(ParameterError, match="needs vertex_model_display_name") as error:
        parameters.validate({"vertex_parent_model": PARENT})  # a version of nothing: the upload would not run
    with pytest.raises(ParameterError, match="prediction container image URI"):
        parameters.validate({"vertex_model_display_name": "flowers", "vertex_serving_image": " "})


def test_a_parameter_of_one_pipeline_only(tmp_path):
    source = {"data_source": str(tmp_path), "pretrained_weights": "none"}
    registry_names = {"vertex_model_display_name", "vertex_parent_model", "vertex_serving_image"}
    vertex = parameters.resolve(source, target="vertex")
    assert registry_names <= set(vertex) and vertex["accelerator_type"] == "NVIDIA_L4"  # the target's defaults
    for target in ("kfp", "local"):
        values = parameters.resolve(source, target=target)
        # Train's machines too: on a cluster kic submit compiles them into the pipeline.
        assert set(values) == {parameter.name for parameter in parameters.PIPELINE_PARAMETERS
                               if parameter.belongs_to(target)}
        run_parameters = {parameter.name for parameter in parameters.for_target(target)}
        assert run_parameters == set(values) - (set(parameters.TRAIN_MACHINE_PARAMETERS) if target == "kfp" else set())
        assert not registry_names & set(values)
        with pytest.raises(ParameterError) as error:
            parameters.resolve(source, {"vertex_model_display_name": "flowers", "vertex_parent_model": "bad"},
                               target=target)
        assert names(error.value) == {"vertex_model_display_name", "vertex_parent_model"}  # and the form as well
        assert "only the Vertex AI pipeline has this parameter" in str(error.value)
    assert set(parameters.resolve(source)) == set(parameters.PARAMETERS_BY_NAME)  # no target: every one


def test_seeds_image_size_and_batch_size_have_ranges_with_their_reasons(tmp_path):
    source = {"data_source": str(tmp_path), "pretrained_weights": "none"}
    with pytest.raises(ParameterError) as error:
        parameters.resolve({**source, "seed": "-1", "split_seed": str(2**32), "image_size": "100000",
                            "batch_size": "1000000"})
    assert names(error.value) == {"seed", "split_seed", "image_size", "batch_size"}
    assert "2**32 - 1: what the random number generators take" in str(error.value)
    assert "larger inputs do not fit a batch in accelerator memory" in str(error.value)
    # A 20-digit seed is refused, not rounded into range; the largest is kept to the digit.
    with pytest.raises(ParameterError, match="seed=12345678901234567890: an integer from 0"):
        parameters.resolve({**source, "seed": "12345678901234567890"})
    assert parameters.resolve({**source, "seed": str(2**32 - 1)})["seed"] == 2**32 - 1


@pytest.mark.parametrize("content", [b'{"epochs": "3", "note": "caf\xe9"}', b'{"epochs": ' + b"[" * 100_000])
def test_a_hyperparameter_file_that_is_not_utf8_or_nested_too_deeply_is_a_user_error(tmp_path, capsys, content):
    from kic import cli

    path = tmp_path / "hyperparameters.json"
    path.write_bytes(content)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err or "nested too deeply" in err
    assert "Traceback" not in err
