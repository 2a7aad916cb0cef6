"""The component bodies, in process, with KFP's own artifact objects: what each
step writes and records, and that only user errors end a step without a
traceback."""

import json
import os

import numpy as np
import pytest
from kfp import dsl

from kic import artifacts, parameters, storage
from kic.demo_data import write_demo_dataset
from kic.errors import ParameterError
from kic.evaluation.metrics import EvaluationResult
from kic.runtime import steps


def artifact(kind, tmp_path, name):
    return kind(name=name, uri=str(tmp_path / name), metadata={})


def pipeline_values(**overrides):
    return {**parameters.defaults(), "data_source": "/data", "pretrained_weights": "none", **overrides}


# ----------------------------------------------------------------- validate
def test_validate_accepts_every_default_and_sizes_the_prepared_images(tmp_path, capsys):
    values = pipeline_values(data_source=str(tmp_path))
    assert steps.validate_step(**values) == 224  # MobileNetV2's input size
    out = capsys.readouterr().out
    assert f"all {len(parameters.PIPELINE_PARAMETERS)} parameters are valid" in out
    assert "ignored for optimizer adam" in out
    assert steps.validate_step(**{**values, "image_short_side": 500}) == 500


def test_validate_sizes_the_prepared_images_for_the_earlier_model_it_continues(tmp_path, gcs_emulator, capsys):
    """Incremental training keeps the earlier model's input size (96 here, not the pipeline
    backbone's 224): prepare must store images for that size, wherever the model is."""
    import io
    import tarfile

    from kic.model.model_info import ModelInfo

    info = ModelInfo(backbone="efficientnet_b0", image_size=96, interpolation="bilinear", class_names=("a", "b"),
                     binary_mode=False).to_json().encode()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / artifacts.MODEL_INFO).write_bytes(info)
    (folder / artifacts.KERAS_MODEL).write_bytes(b"keras")  # validate asks for what train continues from
    tarball = tmp_path / artifacts.MODEL_TARBALL
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in ((artifacts.MODEL_INFO, info), (artifacts.KERAS_MODEL, b"keras")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    remote = f"{gcs_emulator.new_bucket()}/models/{artifacts.MODEL_TARBALL}"
    storage.copy_file(str(tarball), remote)

    values = pipeline_values(data_source=str(tmp_path))
    assert steps.validate_step(**values) == 224  # the pipeline's MobileNetV2 at 224
    for base_model_uri in (str(folder), str(tarball), remote):
        assert steps.validate_step(**{**values, "base_model_uri": base_model_uri}) == 96, base_model_uri
    assert "continues the earlier model's backbone efficientnet_b0 at 96x96" in capsys.readouterr().out

    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as archive:
        archive.add(str(folder / artifacts.MODEL_INFO), arcname="elsewhere.json")
    with pytest.raises(SystemExit):
        steps.validate_step(**{**values, "base_model_uri": str(tmp_path / "other.tar.gz")})
    out = capsys.readouterr().out
    assert f"not a kic model (no {artifacts.KERAS_MODEL} or {artifacts.MODEL_INFO})" in out and "Traceback" not in out


def test_validate_lists_every_problem_of_every_kind_and_exits_without_a_traceback(tmp_path, capsys):
    values = pipeline_values(
        data_source=str(tmp_path / "missing"), backbone="resnet5O", epochs=0, eval_metric="auc", learning_rate=3.0,
        validation_fraction=0.0, tflite="int4", top_k=0, gate_metric="f1", max_regression=-1.0,
        batch_predict_format="xml", baseline_model_uri=str(tmp_path / "no-model"))
    with pytest.raises(SystemExit) as stop:
        steps.validate_step(**values)
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "validate failed: ParameterError" in out and "Traceback" not in out
    for expected in ("epochs=0", "learning_rate=3.0", "eval_metric='auc'", "resnet5O", "validation_fraction=0.0",
                     "tflite='int4'", "top_k=0", "gate_metric='f1'", "max_regression=-1.0", "batch_predict_format",
                     "baseline_model_uri", "data_source"):
        assert expected in out, expected


def test_debug_mode_keeps_the_exception(monkeypatch):
    monkeypatch.setenv("KIC_DEBUG", "1")
    with pytest.raises(ParameterError):
        steps.validate_step(**pipeline_values(epochs=0))


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A ValueError from deep inside Keras is not the user's doing: it must not pass for one."""
    import kic.training

    def broken_train(*_args, **_kwargs):
        raise ValueError("Input 0 of layer 'top_dense' is incompatible with the layer: expected axis -1 to be 1280")

    monkeypatch.setattr(kic.training, "train", broken_train)
    with pytest.raises(ValueError, match="incompatible with the layer"):
        steps.train_step(examples=artifact(dsl.Dataset, tmp_path, "examples"),
                         model=artifact(dsl.Model, tmp_path, "model"),
                         training_metrics=artifact(dsl.Metrics, tmp_path, "metrics"),
                         backbone="mobilenet_v2_100_224", pretrained_weights="none", image_size=0, base_model_uri="",
                         seed=1, **{name: parameters.defaults()[name] for name in parameters.HYPERPARAMETERS})


# ------------------------------------------------------------------ prepare
def _prepare(tmp_path, source, **overrides):
    outputs = {"examples": artifact(dsl.Dataset, tmp_path, "examples"),
               "report": artifact(dsl.HTML, tmp_path, "report"),
               "report_markdown": artifact(dsl.Markdown, tmp_path, "report_md"),
               "data_metrics": artifact(dsl.Metrics, tmp_path, "data_metrics")}
    arguments = dict(source=source, validation_source="", test_source="", validation_fraction=0.25,
                     test_fraction=0.25, seed=42, image_short_side=40, images_per_shard=1024,
                     max_rejected_fraction=0.05, tfds_data_dir="")
    steps.prepare_step(**outputs, **{**arguments, **overrides})
    return outputs


def test_prepare_writes_the_dataset_and_publishes_the_report(tmp_path, capsys):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=8, size=40)
    (tmp_path / "images" / "circle" / "broken.png").write_bytes(b"<html>not an image</html>")  # 1 of 25: allowed
    outputs = _prepare(tmp_path, str(tmp_path / "images"))
    assert "prepare: warning: 1 file(s) rejected and 0 duplicate(s) dropped of 25" in capsys.readouterr().out
    examples = outputs["examples"]
    assert os.path.isfile(os.path.join(examples.path, artifacts.DATASET_INFO))
    assert examples.metadata["class_names"] == ["circle", "square", "triangle"]
    assert (examples.metadata["num_train"], examples.metadata["num_validation"], examples.metadata["num_test"]) == \
        (12, 6, 6)
    assert outputs["data_metrics"].metadata["num_train"] == 12.0
    assert "circle" in open(outputs["report"].path).read() and open(outputs["report_markdown"].path).read()


def test_a_failed_prepare_still_publishes_its_report_and_says_why_in_the_log(tmp_path, capsys):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=8, size=40)
    for index in range(4):
        (tmp_path / "images" / "circle" / f"broken{index}.png").write_bytes(b"<html>not an image</html>")
    with pytest.raises(SystemExit):
        _prepare(tmp_path, str(tmp_path / "images"))
    out = capsys.readouterr().out
    # On a cluster a failed task's outputs are not uploaded: the log must carry the summary.
    assert "DataQualityError" in out and "4 files rejected (14.3%): not_an_image 4" in out
    assert "circle/broken0.png: not_an_image" in out
    assert "broken0.png" in open(tmp_path / "report_md").read()


def test_snapshot_fingerprints_data_and_models(tmp_path):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=2, size=16)
    (tmp_path / "model.tar.gz").write_bytes(b"archive")
    data, base, baseline, weights, search_space, baseline_uri = steps.snapshot_step(
        data_source=str(tmp_path / "images"), validation_source="", test_source="", tfds_data_dir="",
        base_model_uri=str(tmp_path / "model.tar.gz"), baseline_model_uri="")
    assert len(data) == len(base) == 32 and data != base
    assert baseline == weights == search_space == baseline_uri == ""
    with pytest.raises(SystemExit):  # a source gone since validate: a user error, in the log
        steps.snapshot_step(data_source=str(tmp_path / "gone"), validation_source="", test_source="",
                            tfds_data_dir="", base_model_uri="", baseline_model_uri="")


def test_snapshot_resolves_the_baseline_to_what_latest_names_and_fingerprints_it(tmp_path, capsys):
    """By default the new model is judged against the one export_uri/LATEST names when the run starts; a
    LATEST that moved changes evaluate's cache key (the fingerprint), and none turns the comparison off."""
    from kic.serving.export import publish_version

    write_demo_dataset(str(tmp_path / "images"), images_per_class=2, size=16)
    package = tmp_path / "package"
    package.mkdir()
    (package / artifacts.MODEL_INFO).write_text("{}")
    exports = str(tmp_path / "exports")

    def snapshot(baseline_model_uri="", export_uri=exports):
        outputs = steps.snapshot_step(data_source=str(tmp_path / "images"), validation_source="", test_source="",
                                      tfds_data_dir="", base_model_uri="", baseline_model_uri=baseline_model_uri,
                                      export_uri=export_uri)
        return outputs[2], outputs[5]  # the baseline's fingerprint and URI

    assert snapshot() == ("", "")  # the first run: nothing published yet
    first = publish_version(str(package), exports, "run-1")
    fingerprint, uri = snapshot()
    assert uri == first and len(fingerprint) == 32
    assert f"compared with {first} (what LATEST names)" in capsys.readouterr().out
    (package / "model.keras").write_text("weights")
    second = publish_version(str(package), exports, "run-2")
    moved, uri = snapshot()
    assert uri == second and moved != fingerprint
    assert snapshot("none") == ("", "")
    given = str(tmp_path / "exports" / "run-1")
    assert snapshot(given) == (fingerprint, given)

    (tmp_path / "exports" / artifacts.LATEST_POINTER).write_text(str(tmp_path / "exports" / "gone") + "\n")
    with pytest.raises(SystemExit):
        snapshot()
    assert "which is not a kic model" in capsys.readouterr().out


def test_train_asked_for_a_gpu_without_one_fails_at_once(prepared, tiny_backbone, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(SystemExit):
        steps.train_step(examples=dsl.Dataset(name="examples", uri=prepared, metadata={}),
                         model=artifact(dsl.Model, tmp_path, "model"),
                         training_metrics=artifact(dsl.Metrics, tmp_path, "metrics"), backbone=tiny_backbone,
                         pretrained_weights="none", image_size=32, base_model_uri="", seed=1, required_gpus=1,
                         **{name: parameters.defaults()[name] for name in parameters.HYPERPARAMETERS})
    out = capsys.readouterr().out
    assert "train: devices: 0 GPU(s)" in out and "NoGpuError: train asked for 1 GPU(s) and sees 0" in out
    assert not os.path.exists(tmp_path / "model")


# -------------------------------------------- train, evaluate, export, predict
@pytest.fixture(scope="module")
def chain(prepared, tiny_backbone, tmp_path_factory):
    """The train, evaluate and export steps one after the other, as the pipeline runs them."""
    tmp_path = tmp_path_factory.mktemp("steps")
    examples = dsl.Dataset(name="examples", uri=prepared, metadata={})
    model, training_metrics = artifact(dsl.Model, tmp_path, "model"), artifact(dsl.Metrics, tmp_path, "training")
    hyperparameters = {**{name: parameters.defaults()[name] for name in parameters.HYPERPARAMETERS},
                       "epochs": 2, "batch_size": 8, "learning_rate": 0.01}
    steps.train_step(examples=examples, model=model, training_metrics=training_metrics, backbone=tiny_backbone,
                     pretrained_weights="none", image_size=32, base_model_uri="", seed=1, **hyperparameters)
    evaluated = {key: artifact(kind, tmp_path, key) for key, kind in (
        ("metrics", dsl.Metrics), ("classification_metrics", dsl.ClassificationMetrics),
        ("evaluation", dsl.Artifact), ("report", dsl.HTML), ("report_markdown", dsl.Markdown),
        ("blessing", dsl.Artifact), ("comparison", dsl.Metrics))}
    blessed = steps.evaluate_step(examples=examples, model=model, gate_metric="", gate_minimum=0.0,
                                  baseline_model_uri="", max_regression=0.0, top_k=2, **evaluated)
    package = artifact(dsl.Model, tmp_path, "package")
    exported = steps.export_step(model=model, evaluation=evaluated["metrics"], package=package, destination_uri="",
                                 tflite="", top_k=2, examples=examples)
    return {"tmp_path": tmp_path, "examples": examples, "model": model, "training_metrics": training_metrics,
            "blessed": blessed, "package": package, "exported": exported, **evaluated}


def test_train_step_saves_the_model_and_records_its_best_epoch(chain):
    model, metrics = chain["model"], chain["training_metrics"]
    assert os.path.isfile(os.path.join(model.path, artifacts.KERAS_MODEL))
    info = json.loads(open(os.path.join(model.path, artifacts.MODEL_INFO)).read())
    assert model.metadata["best_epoch"] == metrics.metadata["best_epoch"]
    assert model.metadata["backbone"] == info["backbone"] == "tiny_test_net"
    assert metrics.metadata["best_epoch"] in (1, 2) and model.metadata["epochs_run"] == 2
    assert metrics.metadata["val_accuracy"] == pytest.approx(info["metrics"]["val_accuracy"])


def test_evaluate_step_records_metrics_matrix_evaluation_and_decision(chain):
    scalars = json.loads(open(chain["metrics"].path).read())
    assert chain["metrics"].metadata["accuracy"] == pytest.approx(scalars["accuracy"])
    assert scalars["top_2_accuracy"] >= scalars["accuracy"] and scalars["num_examples"] == 12  # 4 test images a class
    evaluation = EvaluationResult.from_json(open(chain["evaluation"].path).read())
    assert evaluation.scalars == scalars and chain["evaluation"].metadata == {"split": "test", "num_classes": 3,
                                                                        "baseline_fingerprint": ""}
    matrix = chain["classification_metrics"].metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == ["circle", "square", "triangle"]
    assert [row["row"] for row in matrix["rows"]] == evaluation.confusion_matrix
    blessing = json.loads(open(chain["blessing"].path).read())
    assert chain["blessed"] is blessing["blessed"] is chain["blessing"].metadata["blessed"] is True
    assert "<html" in open(chain["report"].path).read()


def test_evaluate_step_blocks_below_the_minimum(chain, tmp_path):
    outputs = {key: artifact(kind, tmp_path, key) for key, kind in (
        ("metrics", dsl.Metrics), ("classification_metrics", dsl.ClassificationMetrics),
        ("evaluation", dsl.Artifact), ("report", dsl.HTML), ("report_markdown", dsl.Markdown),
        ("blessing", dsl.Artifact), ("comparison", dsl.Metrics))}
    blessed = steps.evaluate_step(examples=chain["examples"], model=chain["model"], gate_metric="accuracy",
                                  gate_minimum=1.01, baseline_model_uri="", max_regression=0.0, top_k=5, **outputs)
    assert blessed is False and outputs["blessing"].metadata["blessed"] is False
    assert "1.01" in " ".join(outputs["blessing"].metadata["reasons"])
    assert outputs["comparison"].metadata == {}  # no baseline: nothing side by side


def test_evaluate_step_blocked_by_its_baseline_says_why_in_the_run_outputs(chain, tmp_path, capsys):
    """On a cluster the run succeeds; what a user sees of the blocked model is the blessing's metadata
    (the summary with the numbers, where the report is), the comparison metrics and the Markdown."""
    import dataclasses

    from test_export import build_model_dir

    from kic.model import model_info

    worse = build_model_dir(str(tmp_path / "worse"), seed=5)  # a random initialisation
    info = model_info.load(chain["model"].path)
    model_info.save(worse, dataclasses.replace(model_info.load(worse), class_names=info.class_names))
    outputs = {key: artifact(kind, tmp_path, key) for key, kind in (
        ("metrics", dsl.Metrics), ("classification_metrics", dsl.ClassificationMetrics),
        ("evaluation", dsl.Artifact), ("report", dsl.HTML), ("report_markdown", dsl.Markdown),
        ("blessing", dsl.Artifact), ("comparison", dsl.Metrics))}
    blessed = steps.evaluate_step(examples=chain["examples"], model=dsl.Model(name="model", uri=worse, metadata={}),
                                  gate_metric="", gate_minimum=0.0, baseline_model_uri=chain["model"].path,
                                  baseline_fingerprint="abc", max_regression=0.01, top_k=2, **outputs)
    metadata = outputs["blessing"].metadata
    assert blessed is False and metadata["blessed"] is False
    assert metadata["summary"].startswith("not exported: accuracy = ") and chain["model"].path in metadata["summary"]
    assert metadata["report"] == outputs["report"].uri and metadata["regression"] > 0.01
    side_by_side = outputs["comparison"].metadata
    assert side_by_side["accuracy_change"] == pytest.approx(side_by_side["new_accuracy"]
                                                            - side_by_side["baseline_accuracy"])
    assert side_by_side["baseline_accuracy"] == pytest.approx(metadata["baseline_value"])
    assert json.loads(open(outputs["comparison"].path).read()) == side_by_side
    whole = json.loads(open(outputs["evaluation"].path).read())
    assert whole["comparison"]["compared_on"] == "on the same 12 test images"
    assert "Not exported" in open(outputs["report_markdown"].path).read()
    assert f"evaluate: {metadata['summary']} The report: {outputs['report'].uri}" in capsys.readouterr().out


def test_a_thousand_classes_stay_under_the_metadata_limit(tmp_path):
    """KFP's metadata store takes messages of at most 4 MB; a full 1,000-class matrix is about 11 MB."""
    classes = [f"class_{index:04d}" for index in range(1000)]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1000), 3)
    probabilities = rng.dirichlet(np.ones(1000) * 0.1, size=len(labels))
    from kic.evaluation.metrics import evaluate_predictions

    result = evaluate_predictions(labels, probabilities, classes, binary_mode=False)
    target = artifact(dsl.ClassificationMetrics, tmp_path, "classification_metrics")
    steps._log_confusion_matrix(target, result)
    assert len(json.dumps(target.metadata)) < 100_000
    shown = [spec["displayName"] for spec in target.metadata["confusionMatrix"]["annotationSpecs"]]
    assert len(shown) == 50 and "1000 classes" in target.metadata["confusionMatrixNote"]
    errors = {name: sum(row) - row[index] + sum(r[index] for r in result.confusion_matrix) - row[index]
              for index, (name, row) in enumerate(zip(classes, result.confusion_matrix, strict=True))}
    assert min(errors[name] for name in shown) >= sorted(errors.values())[-50]  # the most confused ones


def test_export_step_packages_the_model_with_its_evaluation(chain):
    package = chain["package"]
    assert package.metadata["tarball"] == os.path.join(package.path, artifacts.MODEL_TARBALL)
    assert os.path.isfile(os.path.join(package.path, artifacts.SAVED_MODEL_VERSION_DIR, "saved_model.pb"))
    info = json.loads(open(os.path.join(package.path, artifacts.MODEL_INFO)).read())
    assert info["evaluation_metrics"] == json.loads(open(chain["metrics"].path).read())
    assert info["serving"]["top_k"] == 2
    # Served originals of the test split against the evaluated records (the demo images are still on disk).
    parity_report = json.loads(open(os.path.join(package.path, artifacts.SERVING_PARITY_REPORT)).read())
    assert parity_report["num_files"] == 12 == package.metadata["serving_parity_files"]
    assert package.metadata["serving_parity_top1_agreement"] == parity_report["top1_agreement"]
    assert package.metadata["serving_parity_pixel_mean_diff"] == parity_report["pixel_mean_diff"] <= 2.5
    assert parity_report["within_bounds"] and not parity_report["systematic"]


def test_export_step_tells_a_model_registry_where_the_saved_model_is_and_what_it_is(chain):
    saved_model_uri, labels, description = chain["exported"]
    assert saved_model_uri == os.path.join(chain["package"].uri, artifacts.SAVED_MODEL_VERSION_DIR)
    assert os.path.isfile(os.path.join(saved_model_uri, "saved_model.pb"))
    assert labels["backbone"] == "tiny_test_net" and labels["classes"] == "3" and labels["mode"] == "multiclass"
    accuracy = json.loads(open(chain["metrics"].path).read())["accuracy"]
    assert description.startswith("kic image classifier: tiny_test_net at 32x32 pixels, 3 classes")
    assert f"test accuracy {accuracy:.4f}" in description


def test_export_step_publishes_a_version_per_run_and_points_latest_at_it(chain, tmp_path):
    published = tmp_path / "published"
    for run_id in ("run-1", "run-2"):
        package = artifact(dsl.Model, tmp_path / run_id, "package")
        steps.export_step(model=chain["model"], evaluation=chain["metrics"], package=package,
                          destination_uri=str(published), run_id=run_id, tflite="", top_k=2)
        assert package.metadata["published"] == str(published / run_id)
    for run_id in ("run-1", "run-2"):
        assert (published / run_id / "_SUCCESS").exists() and (published / run_id / "model.tar.gz").exists()
    assert (published / "LATEST").read_text().strip() == str(published / "run-2")

    # Kubeflow Pipelines before 2.5 passes the run-id placeholder on unresolved: each run still gets its own
    # version, never one folder named after the placeholder.
    for attempt in ("old-1", "old-2"):
        package = artifact(dsl.Model, tmp_path / attempt, "package")
        steps.export_step(model=chain["model"], evaluation=chain["metrics"], package=package,
                          destination_uri=str(published), run_id="{{$.pipeline_job_uuid}}", tflite="", top_k=2)
    versions = sorted(path.name for path in published.iterdir() if path.name.startswith("20"))
    assert len(versions) == 2 and not list(published.glob("{{*"))
    assert (published / "LATEST").read_text().strip() == str(published / versions[-1])


def test_batch_predict_step_predicts_with_the_exported_package(chain, tmp_path):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=2, size=40)
    (tmp_path / "images" / "circle" / "broken.png").write_bytes(b"not a png")
    predictions = artifact(dsl.Dataset, tmp_path, "predictions")
    summary = artifact(dsl.Metrics, tmp_path, "summary")
    steps.batch_predict_step(package=chain["package"], inputs=str(tmp_path / "images"), predictions=predictions,
                             prediction_summary=summary, output_format="jsonl", batch_size=4, top_k=2)
    rows = [json.loads(line) for line in open(predictions.path)]
    assert len(rows) == 7 and predictions.metadata == {"format": "jsonl", "rows": 7}
    assert summary.metadata == {"total": 7.0, "succeeded": 6.0, "failed": 1.0, "skipped_files": 0.0}
    ok = [row for row in rows if row["status"] == "ok"]
    assert all(len(row["top_k"]) == 2 and np.isclose(sum(row["probabilities"].values()), 1.0, atol=1e-4)
               for row in ok)
