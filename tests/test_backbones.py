"""Backbone registry: name / model_id resolution, pixel scaling, building and weights files.

Nothing here downloads: ImageNet weights are only requested against an unreachable
local URL, to check the offline error.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from kic import storage
from kic.errors import ParameterError
from kic.model import backbone_registry
from kic.model.backbone_registry import UnknownBackboneError, resolve
from kic.model.backbones import build_feature_extractor
from kic.model.pixel_scaling import MODES, PixelScaling
from kic.model.weights import BackboneWeightsError

SMALL = "mobilenet_v2_035_96"


def random_pixels(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 255.0, (batch, size, size, 3)).astype("float32")


def to_numpy(tensor) -> np.ndarray:
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def assert_same_outputs(actual, expected) -> None:
    """Randomly initialised backbones emit tiny features (~1e-6), so compare relative to their scale."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    scale = float(np.abs(expected).max())
    assert scale > 0.0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(("text", "expected"), [
    ("mobilenet_v2_100_224", "mobilenet_v2_100_224"),
    ("MobileNet-V2-140-224", "mobilenet_v2_140_224"),
    ("MobileNetV2", "mobilenet_v2_100_224"),
    ("EfficientNetB3", "efficientnet_b3"),
    ("ResNet50V2", "resnet50_v2"),
    ("resnet50_v1", "resnet50"),
    ("efficientnet-v2-s", "efficientnet_v2_s"),
])
def test_resolve_by_name_and_spelling(text, expected):
    assert resolve(text).name == expected


@pytest.mark.parametrize(("model_id", "expected", "size"), [
    ("tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4", "mobilenet_v2_100_224", 224),
    ("tensorflow-ic-imagenet-mobilenet-v2-140-224-classification-4", "mobilenet_v2_140_224", 224),
    ("tensorflow-ic-imagenet-mobilenet-v2-035-96-classification-4", "mobilenet_v2_035_96", 96),
    ("tensorflow-ic-imagenet-mobilenet-v1-025-128-classification-4", "mobilenet_v1_025_128", 128),
    ("tensorflow-ic-imagenet-mobilenet-v1-075-192-classification-4", "mobilenet_v1_075_192", 192),
    ("tensorflow-ic-imagenet-resnet-v1-50-classification-4", "resnet50", 224),
    ("tensorflow-ic-imagenet-resnet-v2-152-classification-4", "resnet152_v2", 224),
    ("tensorflow-ic-imagenet-inception-v3-classification-4", "inception_v3", 299),
    ("tensorflow-ic-imagenet-inception-resnet-v2-classification-4", "inception_resnet_v2", 299),
    ("tensorflow-ic-efficientnet-b0-classification-1", "efficientnet_b0", 224),
    ("tensorflow-ic-efficientnet-b7-classification-1", "efficientnet_b7", 600),
    ("tensorflow-ic-tf2-preview-mobilenet-v2-classification-4", "mobilenet_v2_100_224", 224),
    ("tensorflow-ic-imagenet-mobilenet-v3-small-075-224-classification-5", "mobilenet_v3_small_075_224", 224),
])
def test_resolve_reference_model_ids(model_id, expected, size):
    backbone = resolve(model_id)
    assert (backbone.name, backbone.input_size) == (expected, size)


def test_every_listed_reference_id_resolves_back_to_its_entry():
    listed = [(model_id, b.name) for b in backbone_registry.REGISTRY.values() for model_id in b.reference_model_ids]
    assert len(listed) > 50
    for model_id, name in listed:
        assert resolve(model_id).name == name, model_id


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownBackboneError) as caught:
        resolve("mobilenet_v2_100_225")
    assert "mobilenet_v2_100_224" in caught.value.suggestions
    assert "mobilenet_v2_100_224" in str(caught.value) and "unknown backbone" in str(caught.value)


def test_reference_id_with_unsupported_width_names_same_family():
    with pytest.raises(UnknownBackboneError) as caught:
        resolve("tensorflow-ic-imagenet-mobilenet-v1-025-96-classification-4")
    assert caught.value.suggestions and all(s.startswith("mobilenet_v1_") for s in caught.value.suggestions)


@pytest.mark.parametrize(("model_id", "suggested", "reason"), [
    ("tensorflow-ic-imagenet-inception-v1-classification-4", "inception_v3", "Inception V1"),
    ("tensorflow-ic-bit-s-r50x1-ilsvrc2012-classification-1", "resnet50_v2", "group normalization"),
    ("tensorflow-ic-efficientnet-lite0-classification-2", "efficientnet_b0", "EfficientNet-Lite0"),
    ("tensorflow-ic-imagenet-pnasnet-large-classification-4", "nasnet_large", "PNASNet"),
])
def test_unmappable_reference_ids_explain_and_suggest(model_id, suggested, reason):
    with pytest.raises(UnknownBackboneError) as caught:
        resolve(model_id)
    message = str(caught.value)
    assert suggested in caught.value.suggestions
    assert reason in message and "not in Keras Applications" in message and model_id in message


def test_registry_covers_the_families_at_native_sizes():
    sizes = {name: b.input_size for name, b in backbone_registry.REGISTRY.items()}
    assert [sizes[f"efficientnet_b{i}"] for i in range(8)] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert sizes["inception_v3"] == sizes["xception"] == sizes["inception_resnet_v2"] == 299
    v1_variants = {f"mobilenet_v1_{w}_{s}" for w in ("025", "050", "075", "100")
                   for s in (128, 160, 192, 224)}
    assert v1_variants <= set(sizes)
    for name in ("mobilenet_v3_large_minimalistic_100_224", "efficientnet_v2_l", "resnet152", "densenet201",
                 "convnext_large", "nasnet_mobile", backbone_registry.DEFAULT_BACKBONE,
                 backbone_registry.CPU_DEMO_BACKBONE):
        assert name in sizes


def test_format_registry_lists_every_backbone():
    table = backbone_registry.format_registry()
    lines = table.splitlines()
    for name, backbone in backbone_registry.REGISTRY.items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert backbone.family in row and str(backbone.input_size) in row and backbone.pixel_scaling in row
    assert "tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4" in table


def test_the_registry_resolves_and_checks_without_keras():
    """The front door resolves a backbone without paying for Keras/TensorFlow (seconds on import)."""
    probe = "\n".join([
        "import sys",
        "from kic.model import backbone_registry",
        "backbone = backbone_registry.resolve('tensorflow-ic-efficientnet-b0-classification-1')",
        "problems = backbone_registry.image_size_problems(backbone, 8)",
        "heavy = sorted(name for name in ('keras', 'tensorflow') if name in sys.modules)",
        "print('RESOLVED', backbone.name, len(problems), 'HEAVY', heavy)"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "RESOLVED efficientnet_b0 1 HEAVY []" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------- pixel scaling


@pytest.mark.parametrize("name", sorted(backbone_registry.REGISTRY))
def test_pixel_scaling_matches_family_preprocess_input(name):
    backbone = backbone_registry.REGISTRY[name]
    module = importlib.import_module(f"keras.applications.{backbone.preprocess_module}")
    pixels = random_pixels(8, seed=len(name))
    expected = np.asarray(module.preprocess_input(pixels.copy()))
    actual = to_numpy(PixelScaling(backbone.pixel_scaling)(pixels))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_pixel_scaling_is_per_pixel_not_per_batch():
    pixels = random_pixels(8, batch=4)
    for mode in MODES:
        layer = PixelScaling(mode)
        whole = to_numpy(layer(pixels))
        alone = to_numpy(layer(pixels[:1]))
        np.testing.assert_allclose(whole[:1], alone, atol=1e-6)


def test_unknown_pixel_scaling_mode_is_rejected():
    with pytest.raises(ValueError, match="valid: tf, caffe, torch, identity"):
        PixelScaling("inception")


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize(("name", "features"), [
    ("mobilenet_v1_025_128", 256),
    (SMALL, 1280),
    ("mobilenet_v3_small_075_224", 432),
])
def test_build_small_backbones_random_init(name, features):
    extractor = build_feature_extractor(resolve(name), image_size=32, weights="none")
    assert extractor.input_shape == (None, 32, 32, 3)
    assert extractor.output_shape == (None, features)
    assert extractor.get_layer("pixel_scaling").mode == resolve(name).pixel_scaling
    output = to_numpy(extractor(random_pixels(32)))
    assert output.shape == (2, features) and np.isfinite(output).all()


def test_image_size_below_architecture_minimum_is_rejected():
    with pytest.raises(ParameterError, match="at least 75, the smallest input backbone inception_v3 takes"):
        build_feature_extractor(resolve("inception_v3"), image_size=64, weights="none")


@pytest.mark.parametrize("weights", ["model.keras", "weights.npz"])
def test_non_weights_files_are_rejected_before_building(weights):
    with pytest.raises(BackboneWeightsError, match="weights"):
        build_feature_extractor(resolve(SMALL), image_size=32, weights=weights)


def test_missing_weights_file_is_reported(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_feature_extractor(resolve(SMALL), image_size=32, weights=missing)


@pytest.fixture(scope="module")
def small_extractor_and_weights(tmp_path_factory):
    extractor = build_feature_extractor(resolve(SMALL), image_size=32, weights="none")
    path = str(tmp_path_factory.mktemp("weights") / "backbone.weights.h5")
    extractor.save_weights(path)
    return extractor, path


def test_weights_file_round_trip_gives_identical_features(small_extractor_and_weights):
    original, path = small_extractor_and_weights
    reloaded = build_feature_extractor(resolve(SMALL), image_size=32, weights=path)
    pixels = random_pixels(32)
    assert_same_outputs(reloaded(pixels), original(pixels))


def test_weights_file_from_gcs(small_extractor_and_weights, gcs_emulator):
    original, path = small_extractor_and_weights
    uri = f"{gcs_emulator.new_bucket()}/backbones/small.weights.h5"
    with open(path, "rb") as handle:
        storage.write_bytes(uri, handle.read())
    from_gcs = build_feature_extractor(resolve(SMALL), image_size=32, weights=uri)
    pixels = random_pixels(32)
    assert_same_outputs(from_gcs(pixels), original(pixels))
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_feature_extractor(resolve(SMALL), image_size=32, weights=uri.replace("small", "other"))


def test_plain_keras_application_weights_load(tmp_path):
    """A file saved from keras.applications directly (what an air-gapped user has) fits too."""
    application = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, pooling="avg",
                                                  input_shape=(32, 32, 3))
    path = str(tmp_path / "plain.weights.h5")
    application.save_weights(path)
    extractor = build_feature_extractor(resolve(SMALL), image_size=32, weights=path)
    pixels = random_pixels(32)
    assert_same_outputs(extractor(pixels), application(pixels / 127.5 - 1.0))


def test_mismatched_weights_file_names_file_and_backbone(small_extractor_and_weights):
    _, path = small_extractor_and_weights
    with pytest.raises(BackboneWeightsError) as caught:
        build_feature_extractor(resolve("mobilenet_v2_050_96"), image_size=32, weights=path)
    message = str(caught.value)
    assert path in message and "mobilenet_v2_050_96" in message and "does not fit" in message
    assert "Target variable" not in message  # no dump of the tensors


def test_efficientnet_without_imagenet_weights_has_the_imagenet_graph(tmp_path, monkeypatch):
    """Keras adds an extra input Rescaling only when it loads ImageNet weights; kic always has it,
    so a weights file computes the same features whichever way the model was built."""
    from keras.src.applications import efficientnet

    ours = build_feature_extractor(resolve("efficientnet_b0"), image_size=32, weights="none")
    path = str(tmp_path / "b0.weights.h5")
    ours.save_weights(path)
    # Serve that file as if it were Keras' ImageNet download, so Keras builds its ImageNet graph.
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: path)
    imagenet_graph = build_feature_extractor(resolve("efficientnet_b0"), image_size=32, weights="imagenet")
    pixels = random_pixels(32)
    assert_same_outputs(ours(pixels), imagenet_graph(pixels))


def test_offline_imagenet_download_fails_fast_and_clearly(keras_home, monkeypatch):
    from keras.src.applications import mobilenet_v2

    # Port 9 (discard) on loopback: refused at once, never leaves the machine.
    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", "http://127.0.0.1:9/keras-applications/")
    with pytest.raises(BackboneWeightsError) as caught:
        build_feature_extractor(resolve(SMALL), weights="imagenet")
    message = str(caught.value)
    assert "could not download ImageNet weights for mobilenet_v2_035_96" in message
    assert str(keras_home / "models") in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    assert "weights='none'" in message


def test_saved_model_with_scaling_reloads_in_safe_mode(tmp_path):
    extractor = build_feature_extractor(resolve("mobilenet_v1_025_128"), image_size=32, weights="none")
    inputs = keras.Input((32, 32, 3))
    logits = keras.layers.Dense(3)(keras.layers.Dropout(0.2)(extractor(inputs)))
    model = keras.Model(inputs, logits)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    pixels = random_pixels(32)
    assert_same_outputs(reloaded(pixels), model(pixels))
    scaling = reloaded.get_layer(extractor.name).get_layer("pixel_scaling")
    assert isinstance(scaling, PixelScaling) and scaling.mode == "tf"


def test_an_efficientnet_without_imagenet_weights_can_be_recalibrated():
    """Its input stack is rebuilt (see above); every layer must still have one input, or the batch-norm
    recalibration before each validation cannot read the layers' inputs."""
    import tensorflow as tf

    from kic.config import TrainingConfig
    from kic.model import classifier
    from kic.training import batch_norm

    extractor = build_feature_extractor(resolve("efficientnet_b0"), image_size=32, weights="none")
    model = classifier.build_new(extractor, image_size=32, num_classes=3, config=TrainingConfig(), seed=0)
    batches = tf.data.Dataset.from_tensor_slices((random_pixels(32, batch=4), np.zeros((4, 3)))).batch(2)
    assert batch_norm.recalibrate(model, batches, images=4) == 4  # both batches of 2
