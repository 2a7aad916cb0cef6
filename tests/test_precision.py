"""Precision and XLA: what each setting means on which devices (described,
not faked in TensorFlow), Keras' policy set for building and put back, and a
real mixed-precision run whose model keeps float32 logits and evaluates."""

import json
import os

import keras
import numpy as np
import pytest
from tiny_backbone import train_options

from kic import artifacts
from kic.config import TrainingConfig
from kic.model import classifier
from kic.model.loading import load_keras_model
from kic.training import precision, train
from kic.training.precision import Devices

CPU = Devices()
AMPERE, TURING = (8, 0), (7, 5)


@pytest.mark.parametrize("devices, expected", [
    (CPU, ("float32", False)),
    (Devices((AMPERE,)), ("mixed_bfloat16", True)),
    (Devices(((9, 0), (8, 6))), ("mixed_bfloat16", True)),
    (Devices((TURING,)), ("mixed_float16", True)),
    (Devices((AMPERE, TURING)), ("mixed_float16", True)),  # the oldest GPU decides
])
def test_auto_is_bfloat16_on_recent_gpus_float16_on_older_ones_float32_on_cpus(devices, expected):
    choice = precision.resolve("auto", "auto", devices)
    assert (choice.precision, choice.jit_compile) == expected


def test_explicit_settings_are_kept_and_several_replicas_turn_xla_off():
    assert precision.resolve("mixed_bfloat16", "true", CPU) == precision.Choice("mixed_bfloat16", True, "as asked")
    assert precision.resolve("float32", "false", Devices((AMPERE,))).jit_compile is False
    two = precision.resolve("auto", "true", Devices((AMPERE, AMPERE)), replicas=2)
    assert two.precision == "mixed_bfloat16" and not two.jit_compile and "2 replicas" in two.reason
    assert "with loss scaling" in precision.resolve("auto", "auto", Devices((TURING,))).describe()


def test_this_machine_is_described_as_it_is():
    import tensorflow as tf

    assert len(Devices.visible().gpu_compute_capabilities) == len(tf.config.list_physical_devices("GPU"))


def test_the_global_policy_is_set_while_building_and_put_back_after_an_error():
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(RuntimeError), precision.policy("mixed_float16"):
        assert keras.layers.Dense(1).dtype_policy.name == "mixed_float16"
        raise RuntimeError
    assert keras.mixed_precision.global_policy().name == before


def test_the_loss_is_float32_under_a_mixed_policy():
    from kic.training.loop import _loss

    with precision.policy("mixed_bfloat16"):
        loss = _loss(TrainingConfig())
    assert loss.dtype == "float32"
    logits = keras.ops.cast(np.array([[2.0, -1.0]]), "bfloat16")
    assert loss(np.array([[1.0, 0.0]], "float32"), logits).dtype == "float32"


def test_only_float16_gets_loss_scaling():
    wrapped = precision.with_loss_scaling(keras.optimizers.SGD(), "mixed_float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert precision.with_loss_scaling(wrapped, "mixed_float16") is wrapped
    assert not isinstance(precision.with_loss_scaling(keras.optimizers.SGD(), "mixed_bfloat16"),
                          keras.optimizers.LossScaleOptimizer)


def test_an_earlier_float32_model_is_rebuilt_in_the_new_precision_with_its_weights(trained):
    model = load_keras_model(trained.model_dir)
    recast = precision.recast(model, "mixed_bfloat16", keep_float32=(classifier.DENSE_LAYER,))
    assert precision.recast(recast, "mixed_bfloat16", keep_float32=(classifier.DENSE_LAYER,)) is recast
    assert recast.get_layer(classifier.DENSE_LAYER).compute_dtype == "float32"
    assert classifier.backbone_of(recast).get_layer("conv1").compute_dtype == "bfloat16"
    for mine, theirs in zip(model.get_weights(), recast.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(recast(pixels), model(pixels), atol=0.1)  # bfloat16 has 8 bits of mantissa


def test_a_mixed_bfloat16_run_trains_and_its_model_is_saved_in_float32_and_evaluates(prepared, tiny_backbone,
                                                                                  tmp_path):
    from kic.evaluation.evaluate import evaluate_model

    lines = []
    result = train(prepared, str(tmp_path / "model"), TrainingConfig(epochs=1, batch_size=8),
                   train_options(tiny_backbone, precision="mixed_bfloat16"), log=lines.append)
    assert "train: precision mixed_bfloat16; XLA off (auto: off on the CPU)" in lines
    assert keras.mixed_precision.global_policy().name == "float32"  # the process's policy, put back
    assert np.isfinite(result.history["loss"]).all()
    # Saved computing in float32 throughout, for evaluation and serving on any device.
    model = load_keras_model(str(tmp_path / "model"))
    assert {layer.compute_dtype for layer in model._flatten_layers()} == {"float32"}
    assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == "float32"
    evaluation = evaluate_model(prepared, str(tmp_path / "model"), log=lambda _line: None)
    assert 0.0 <= evaluation.result.scalars["accuracy"] <= 1.0
    info = json.loads(open(os.path.join(tmp_path / "model", artifacts.MODEL_INFO)).read())
    assert info["backbone"] == tiny_backbone
