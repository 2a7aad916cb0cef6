"""Export: the serving package, its signature, verification, TFLite and publishing."""

from __future__ import annotations

import io
import json
import os
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from image_fixtures import encode, exif_block, exif_rotated_jpeg, noise_image, noise_jpeg, solid_png
from PIL import Image, ImageOps

from kic import artifacts, storage
from kic.model import model_info, preprocessing
from kic.model.loading import load_trained_model
from kic.model.model_info import ModelInfo
from kic.serving import contract, export, tflite, verify

IMAGE_SIZE = 32
CLASSES = ("daisy", "rose", "tulip")


def build_model_dir(path: str, *, binary: bool = False, interpolation: str = "bilinear",
                    seed: int = 1) -> str:
    """A tiny trained-model directory as the train step writes it."""
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)  # must be inactive when serving
    # Large weights so that probabilities are far from uniform and differences show.
    large = keras.initializers.RandomNormal(stddev=3.0, seed=seed)
    logits = keras.layers.Dense(1 if binary else len(CLASSES), kernel_initializer=large)(x)
    os.makedirs(path, exist_ok=True)
    keras.Model(pixels, logits).save(os.path.join(path, artifacts.KERAS_MODEL))
    class_names = ("cat", "dog") if binary else CLASSES
    model_info.save(path, ModelInfo(backbone="tiny", image_size=IMAGE_SIZE, interpolation=interpolation,
                                    class_names=class_names, binary_mode=binary, data_fingerprint="abc123"))
    return path


def all_formats() -> dict[str, bytes]:
    image = noise_image((50, 40), seed=3)
    return {
        "jpeg": noise_jpeg((50, 40), seed=3),
        "png": encode(image, "PNG"),
        "gif": encode(image.convert("P"), "GIF"),
        "bmp": encode(image, "BMP"),
        "webp": encode(image, "WEBP", lossless=True),
    }


def serving_fn(package_dir: str):
    return tf.saved_model.load(os.path.join(package_dir, artifacts.SAVED_MODEL_VERSION_DIR)).signatures[
        contract.SIGNATURE_NAME]


def keras_probabilities(model_dir: str, images: list[bytes], interpolation: str | None = None) -> np.ndarray:
    model, info = load_trained_model(model_dir)
    pixels = np.stack([preprocessing.decode_and_resize(tf.constant(raw), IMAGE_SIZE,
                                                       interpolation or info.interpolation).numpy()
                       for raw in images])
    logits = model(pixels, training=False).numpy()
    if info.binary_mode:  # the serving contract: one column, P(positive)
        return 1 / (1 + np.exp(-logits))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    model_dir = build_model_dir(str(root / "model"))
    metrics = {"accuracy": np.float32(0.875), "per_class_recall": np.array([0.5, 1.0, 1.0])}
    options = export.ExportOptions(tflite="float32", top_k=5, evaluation_metrics=metrics)
    result = export.export_model(model_dir, str(root / "package"), options)
    return model_dir, result


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    model_dir = build_model_dir(str(root / "model"), binary=True, seed=3)
    result = export.export_model(model_dir, str(root / "package"), export.ExportOptions(tflite="float16"))
    return model_dir, result


def test_package_layout_and_model_info(multiclass):
    _, result = multiclass
    package = result.package_dir
    assert result.max_abs_diff <= verify.SAVED_MODEL_TOLERANCE
    assert os.path.isfile(os.path.join(package, "1", "saved_model.pb"))
    assert os.path.isfile(os.path.join(package, artifacts.SUCCESS_MARKER))
    with open(os.path.join(package, artifacts.LABEL_MAP)) as handle:
        assert json.load(handle) == {"daisy": 0, "rose": 1, "tulip": 2}
    with open(os.path.join(package, artifacts.MODEL_INFO)) as handle:
        info = json.load(handle)
    assert info["package_version"] == export.PACKAGE_VERSION
    assert info["evaluation_metrics"] == {"accuracy": 0.875, "per_class_recall": [0.5, 1.0, 1.0]}
    assert info["data_fingerprint"] == "abc123"
    assert info["serving"]["input"].startswith("image_bytes")
    assert info["serving"]["top_k"] == 3
    assert info["tflite"]["file"] == artifacts.TFLITE_MODEL
    assert "bilinear" in info["preprocessing"]["resize"]
    # Still a ModelInfo, so incremental training can read its finetuned flag from a package.
    assert model_info.load(package).class_names == CLASSES


def test_tarball_has_the_reference_layout(multiclass):
    _, result = multiclass
    assert result.tarball == os.path.join(result.package_dir, artifacts.MODEL_TARBALL)
    with tarfile.open(result.tarball) as archive:
        names = set(archive.getnames())
    assert {"1/saved_model.pb", "1/variables/variables.index", artifacts.LABEL_MAP, artifacts.MODEL_INFO,
            f"1/{artifacts.WARMUP_FILE}", artifacts.KERAS_MODEL} <= names
    assert not any(name.startswith(("/", "..")) for name in names)
    assert artifacts.SUCCESS_MARKER not in names and artifacts.TFLITE_MODEL not in names


def test_signature_takes_every_format_and_matches_keras(multiclass):
    model_dir, result = multiclass
    images = all_formats()
    serve = serving_fn(result.package_dir)
    assert list(serve.structured_input_signature[1]) == [contract.INPUT_NAME]
    outputs = serve(image_bytes=tf.constant(list(images.values())))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities, keras_probabilities(model_dir, list(images.values())),
                               atol=1e-5)
    predicted = outputs["predicted_index"].numpy()
    np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))
    assert [label.decode() for label in outputs["predicted_label"].numpy()] == [CLASSES[i] for i in predicted]
    # top_k=5 is capped at the number of classes.
    assert outputs["top_k_labels"].shape == (5, 3)
    np.testing.assert_allclose(outputs["top_k_scores"].numpy(), -np.sort(-probabilities, axis=1), atol=1e-7)
    assert outputs["top_k_labels"].numpy()[0, 0].decode() == CLASSES[predicted[0]]
    # The reference's verbose response: every label in index order, beside each image's probabilities.
    assert [[label.decode() for label in row] for row in outputs["labels"].numpy()] == [list(CLASSES)] * 5


def test_pixels_signature_matches_keras(multiclass):
    model_dir, result = multiclass
    images = list(all_formats().values())
    _, info = load_trained_model(model_dir)
    loaded = tf.saved_model.load(os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR))
    from_pixels = loaded.signatures[contract.PIXELS_SIGNATURE_NAME](
        pixels=tf.constant(verify.decoded_pixels(images, info)))["probabilities"].numpy()
    np.testing.assert_allclose(from_pixels, keras_probabilities(model_dir, images), atol=1e-5)


def test_binary_mode_returns_the_positive_class_probability(binary):
    """As the reference algorithm does: probabilities[i][0] is P(positive) of image i."""
    model_dir, result = binary
    images = [*all_formats().values(), solid_png((255, 255, 0))]
    outputs = serving_fn(result.package_dir)(image_bytes=tf.constant(images))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (6, 1)
    np.testing.assert_allclose(probabilities, keras_probabilities(model_dir, images), atol=1e-5)
    positive = probabilities[:, 0]
    assert 0 < positive.min() < 0.5 < positive.max() < 1  # both answers occur, so the labels below mean something
    # The verbose outputs still rank both classes.
    assert [label.decode() for label in outputs["predicted_label"].numpy()] == [
        "dog" if p > 0.5 else "cat" for p in positive]
    np.testing.assert_array_equal(outputs["predicted_index"].numpy(), (positive > 0.5).astype(int))
    assert outputs["top_k_labels"].shape == (6, 2)
    assert [[label.decode() for label in row] for row in outputs["labels"].numpy()] == [["cat", "dog"]] * 6
    np.testing.assert_allclose(outputs["top_k_scores"].numpy(),
                               np.stack([np.maximum(positive, 1 - positive), np.minimum(positive, 1 - positive)],
                                        axis=1), atol=1e-6)
    with open(os.path.join(result.package_dir, artifacts.MODEL_INFO)) as handle:
        info = json.load(handle)
    assert info["positive_class"] == "dog" and info["binary_mode"] is True
    assert "[batch, 1]" in info["serving"]["outputs"]["probabilities"] and "'dog'" in info["output"]
    assert "[batch, 1]" in info["tflite"]["output"]


def test_binary_mode_pixels_signature_and_tflite_return_one_column(binary):
    model_dir, result = binary
    images = list(all_formats().values())
    _, info = load_trained_model(model_dir)
    pixels = verify.decoded_pixels(images, info)
    loaded = tf.saved_model.load(os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR))
    from_pixels = loaded.signatures[contract.PIXELS_SIGNATURE_NAME](pixels=tf.constant(pixels))["probabilities"]
    with open(os.path.join(result.package_dir, artifacts.TFLITE_MODEL), "rb") as handle:
        lite = tflite.probabilities(handle.read(), pixels)
    assert from_pixels.shape == lite.shape == (5, 1)
    np.testing.assert_allclose(from_pixels, keras_probabilities(model_dir, images), atol=1e-5)
    np.testing.assert_allclose(lite, keras_probabilities(model_dir, images), atol=1e-2)


def test_verification_refuses_answers_of_another_shape(binary):
    """[1-p, p] against [p] must not pass by broadcasting."""
    _, result = binary
    samples = verify.generated_sample_images()
    version_dir = os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR)
    served = serving_fn(result.package_dir)(image_bytes=tf.constant(samples))["probabilities"].numpy()
    assert verify.verify_saved_model(version_dir, samples, served) <= verify.SAVED_MODEL_TOLERANCE
    with pytest.raises(verify.ExportVerificationError, match=r"shape \(4, 1\).*\(4, 2\)"):
        verify.verify_saved_model(version_dir, samples, np.concatenate([1 - served, served], axis=1))


def test_a_sideways_phone_photo_is_served_upright(multiclass):
    """The EXIF orientation is applied in the graph, as prepare applied it for training."""
    _, result = multiclass
    raw = encode(noise_image((50, 40), seed=4), "JPEG", quality=95, exif=exif_block(6))
    with Image.open(io.BytesIO(raw)) as stored:
        upright = encode(ImageOps.exif_transpose(stored).convert("RGB"), "PNG")  # what prepare stores, losslessly
        sideways = encode(stored.convert("RGB"), "PNG")  # the same pixels without the tag
    probabilities = serving_fn(result.package_dir)(image_bytes=tf.constant([raw, upright, sideways]))[
        "probabilities"].numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-5)
    assert np.abs(probabilities[0] - probabilities[2]).max() > 1e-3  # the model does tell the two apart


def test_the_serving_graph_holds_only_ops_tf_serving_has(multiclass):
    """No Python callbacks (py_function) and no ops from outside core TensorFlow."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    _, result = multiclass
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node} | {node.op for function in graph.library.function
                                              for node in function.node_def}
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert [op for op in ops if op not in {f.signature.name for f in graph.library.function}
            and op_def_registry.get(op) is None] == []
    assert {"Substr", "DecodeRaw", "StringSplitV2"} <= ops and ops & {"While", "StatelessWhile"}  # the EXIF parser


def test_interpolation_from_model_info_is_honoured(multiclass, tmp_path):
    bilinear_model_dir, bilinear = multiclass
    nearest_model_dir = str(tmp_path / "model")
    # Same weights (same seed), only the interpolation differs.
    build_model_dir(nearest_model_dir, interpolation="nearest")
    nearest = export.export_model(nearest_model_dir, str(tmp_path / "package"), export.ExportOptions())
    detailed = [noise_jpeg((160, 120), seed=7)]
    from_bilinear = serving_fn(bilinear.package_dir)(image_bytes=tf.constant(detailed))["probabilities"]
    from_nearest = serving_fn(nearest.package_dir)(image_bytes=tf.constant(detailed))["probabilities"]
    from_bilinear, from_nearest = from_bilinear.numpy(), from_nearest.numpy()
    assert np.max(np.abs(from_bilinear - from_nearest)) > 1e-3
    np.testing.assert_allclose(from_bilinear, keras_probabilities(bilinear_model_dir, detailed, "bilinear"),
                               atol=1e-5)
    np.testing.assert_allclose(from_nearest, keras_probabilities(nearest_model_dir, detailed, "nearest"),
                               atol=1e-5)


@pytest.mark.parametrize("bad", [b"<html>not found</html>", b"", solid_png()[:20]],
                         ids=["html", "empty", "damaged-png"])
def test_a_bad_image_fails_the_whole_request_clearly(multiclass, bad):
    _, result = multiclass
    serve = serving_fn(result.package_dir)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        serve(image_bytes=tf.constant([noise_jpeg(seed=1), bad]))
    message = raised.value.message.lower()
    assert any(word in message for word in ("image", "png", "jpeg")), message


def test_saved_model_runs_as_tf_serving_loads_it(multiclass):
    """TF Serving restores variables from the checkpoint into a TF1 session."""
    model_dir, result = multiclass
    images = [*all_formats().values(), exif_rotated_jpeg(6), exif_rotated_jpeg(7, byte_order="MM")]
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, ["serve"], os.path.join(result.package_dir, artifacts.SAVED_MODEL_VERSION_DIR))
        signature = meta_graph.signature_def["serving_default"]
        assert set(signature.outputs) == set(contract.OUTPUT_NAMES)
        probabilities, labels = session.run([signature.outputs["probabilities"].name,
                                             signature.outputs["labels"].name],
                                            {signature.inputs["image_bytes"].name: images})
    assert labels.shape == (len(images), len(CLASSES)) and [label.decode() for label in labels[-1]] == list(CLASSES)
    np.testing.assert_allclose(probabilities, keras_probabilities(model_dir, images), atol=1e-5)


def test_warmup_file_holds_a_predict_request_the_model_accepts(multiclass):
    from tensorflow_serving.apis import prediction_log_pb2  # setup.py's test extra: missing is a failure
    _, result = multiclass
    path = os.path.join(result.package_dir, "1", artifacts.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    images = tf.make_ndarray(request.inputs["image_bytes"])
    assert images.shape == (1,)
    outputs = serving_fn(result.package_dir)(image_bytes=tf.constant(images))
    assert outputs["probabilities"].shape == (1, 3)


def test_tflite_float32_matches_keras_on_decoded_pixels(multiclass):
    model_dir, result = multiclass
    assert result.tflite_max_abs_diff is not None and result.tflite_max_abs_diff <= 1e-4
    images = list(all_formats().values())
    _, info = load_trained_model(model_dir)
    with open(os.path.join(result.package_dir, artifacts.TFLITE_MODEL), "rb") as handle:
        lite = tflite.probabilities(handle.read(), verify.decoded_pixels(images, info))
    np.testing.assert_allclose(lite, keras_probabilities(model_dir, images), atol=1e-4)


def _tflite_parity(package_dir: str, model_dir: str) -> tuple[float, float]:
    """Max abs difference and top-1 agreement of the package's TFLite model
    against the Keras model, on the sample images export verifies with."""
    images = verify.generated_sample_images()
    _, info = load_trained_model(model_dir)
    with open(os.path.join(package_dir, artifacts.TFLITE_MODEL), "rb") as handle:
        lite = tflite.probabilities(handle.read(), verify.decoded_pixels(images, info))
    keras_side = keras_probabilities(model_dir, images)
    if info.binary_mode:
        top1 = (lite[:, 0] > 0.5) == (keras_side[:, 0] > 0.5)
    else:
        top1 = lite.argmax(axis=1) == keras_side.argmax(axis=1)
    return float(np.abs(lite - keras_side).max()), float(np.mean(top1))


def test_tflite_float16_parity_report(binary):
    model_dir, result = binary
    with open(os.path.join(result.package_dir, artifacts.TFLITE_PARITY_REPORT)) as handle:
        report = json.load(handle)
    max_abs_diff, agreement = _tflite_parity(result.package_dir, model_dir)
    assert report["quantization"] == "float16" and report["tolerance"] == 1e-2
    assert report["max_abs_diff"] == pytest.approx(max_abs_diff, abs=1e-6) == result.tflite_max_abs_diff
    assert report["top1_agreement"] == agreement
    assert report["passed"] is (max_abs_diff <= 1e-2)


def test_int8_writes_a_parity_report_without_a_gate(tmp_path):
    model_dir = build_model_dir(str(tmp_path / "model"))
    result = export.export_model(model_dir, str(tmp_path / "package"), export.ExportOptions(tflite="int8"))
    with open(os.path.join(result.package_dir, artifacts.TFLITE_PARITY_REPORT)) as handle:
        report = json.load(handle)
    max_abs_diff, agreement = _tflite_parity(result.package_dir, model_dir)
    assert report["quantization"] == "int8 (dynamic range)" and report["tolerance"] is None
    assert report["max_abs_diff"] == pytest.approx(max_abs_diff, abs=1e-6) == result.tflite_max_abs_diff
    assert report["top1_agreement"] == agreement
    assert report["mean_abs_diff"] <= report["max_abs_diff"]


def test_verification_failure_fails_the_export(multiclass, tmp_path, monkeypatch):
    model_dir, _ = multiclass
    monkeypatch.setattr(verify, "SAVED_MODEL_TOLERANCE", -1.0)
    package = tmp_path / "package"
    with pytest.raises(verify.ExportVerificationError, match="differ from the trained Keras model"):
        export.export_model(model_dir, str(package))
    assert not (package / artifacts.SUCCESS_MARKER).exists()
    assert not (package / artifacts.MODEL_TARBALL).exists()


def test_verification_catches_a_serving_model_that_disagrees(multiclass, tmp_path, monkeypatch):
    """A real skew (the signature resizing differently from training) is caught."""
    model_dir, _ = multiclass
    # What training saw (bilinear), computed before the serving path is skewed to nearest.
    reference = keras_probabilities(model_dir, verify.generated_sample_images())
    monkeypatch.setattr(verify, "keras_probabilities", lambda *args: reference)
    original = preprocessing.decode_and_resize
    monkeypatch.setattr(preprocessing, "decode_and_resize",
                        lambda encoded, size, interpolation, short_side=0: original(encoded, size, "nearest"))
    with pytest.raises(verify.ExportVerificationError, match="differ"):
        export.export_model(model_dir, str(tmp_path / "package"))


def test_undecodable_sample_images_are_a_clear_error(multiclass, tmp_path):
    model_dir, _ = multiclass
    with pytest.raises(ValueError, match="sample image"):
        export.export_model(model_dir, str(tmp_path / "package"), sample_images=[b"nope"])


def test_model_info_that_contradicts_the_model_is_refused(tmp_path):
    model_dir = build_model_dir(str(tmp_path / "model"))
    info = model_info.load(model_dir)
    model_info.save(model_dir, ModelInfo(**{**info.__dict__, "image_size": 64}))
    with pytest.raises(ValueError, match="image_size 64"):
        export.export_model(model_dir, str(tmp_path / "package"))


def test_options_are_validated():
    with pytest.raises(ValueError, match="tflite"):
        export.ExportOptions(tflite="int4")
    with pytest.raises(ValueError, match="top_k"):
        export.ExportOptions(top_k=0)


def test_destination_copy_is_complete_and_marked_last(multiclass, tmp_path, monkeypatch):
    model_dir, _ = multiclass
    destination = tmp_path / "published"
    destination.mkdir()
    (destination / artifacts.SUCCESS_MARKER).write_text("stale")
    writes: list[str] = []
    for name in ("copy_file", "write_bytes"):
        original = getattr(storage, name)

        def recording(*args, _original=original, **kwargs):
            writes.append(os.path.basename(args[1] if _original is storage.copy_file else args[0]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(storage, name, recording)
    result = export.export_model(model_dir, str(tmp_path / "package"),
                                 export.ExportOptions(destination_uri=str(destination)))
    published = {os.path.relpath(path, destination) for path in storage.list_files(str(destination))}
    local = {os.path.relpath(path, result.package_dir) for path in storage.list_files(result.package_dir)}
    assert published == local
    assert {artifacts.MODEL_TARBALL, "1/saved_model.pb", artifacts.LABEL_MAP} <= published
    marker_writes = [index for index, name in enumerate(writes) if name == artifacts.SUCCESS_MARKER]
    tarball_copy = max(index for index, name in enumerate(writes) if name == artifacts.MODEL_TARBALL)
    assert marker_writes and marker_writes[0] > tarball_copy
    assert (destination / artifacts.SUCCESS_MARKER).read_text() == ""


def test_export_to_and_from_gcs(multiclass, gcs_emulator, tmp_path):
    model_dir, _ = multiclass
    bucket = gcs_emulator.new_bucket()
    storage.upload_dir(model_dir, f"{bucket}/model")
    result = export.export_model(f"{bucket}/model", f"{bucket}/package",
                                 export.ExportOptions(destination_uri=f"{bucket}/serving/v1"))
    assert result.tarball == f"{bucket}/package/{artifacts.MODEL_TARBALL}"
    for root in (f"{bucket}/package", f"{bucket}/serving/v1"):
        assert storage.exists(f"{root}/{artifacts.SUCCESS_MARKER}")
        assert storage.exists(f"{root}/1/saved_model.pb")
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(result.tarball))) as archive:
        assert "1/saved_model.pb" in archive.getnames()


def test_export_to_s3_with_a_latest_pointer(multiclass, s3_server, tmp_path):
    model_dir, _ = multiclass
    bucket = s3_server.new_bucket()
    storage.upload_dir(model_dir, f"{bucket}/model")
    result = export.export_model(f"{bucket}/model", f"{bucket}/package",
                                 export.ExportOptions(destination_uri=f"{bucket}/serving", version="run-7"))
    assert result.tarball == f"{bucket}/package/{artifacts.MODEL_TARBALL}"
    for root in (f"{bucket}/package", f"{bucket}/serving/run-7"):
        assert storage.exists(f"{root}/{artifacts.SUCCESS_MARKER}")
        assert storage.exists(f"{root}/1/saved_model.pb")
    assert storage.read_text(f"{bucket}/serving/{artifacts.LATEST_POINTER}") == f"{bucket}/serving/run-7\n"
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(result.tarball))) as archive:
        assert "1/saved_model.pb" in archive.getnames()
