"""Numeric precision and XLA for training: the ``precision`` and
``jit_compile`` parameters, resolved against the devices at hand.

``auto`` precision is mixed bfloat16 on GPUs of compute capability 8.0 and
later (Ampere on: bfloat16 tensor cores, and float32's range, so no loss
scaling), mixed float16 on older GPUs (Volta and Turing tensor cores; the
optimizer is wrapped in a LossScaleOptimizer, because float16 gradients
underflow), and float32 on CPUs, where half precision is slower, not faster.
The logits layer and the loss stay in float32 whatever the policy
(``kic.model.classifier``), and the model is saved computing in float32.

``auto`` XLA is on with one GPU. Keras 3 compiles its whole distributed step,
strategy.run included, when jit_compile is on, which XLA cannot do across
devices (keras-team/keras#18145; measured with Keras 3.15 on two logical CPUs:
"Trying to access resource ... located in device CPU:1 from device CPU:0"), so
with more than one replica XLA stays off, and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import keras

from kic import compat
from kic.config import PRECISIONS

AUTO, FLOAT32, MIXED_FLOAT16, MIXED_BFLOAT16 = PRECISIONS
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)  # Ampere


@dataclasses.dataclass(frozen=True)
class Devices:
    """What precision and XLA depend on: the compute capability of each visible GPU."""

    gpu_compute_capabilities: tuple[tuple[int, int], ...] = ()

    @classmethod
    def visible(cls) -> Devices:
        import tensorflow as tf

        capabilities = []
        for gpu in tf.config.list_physical_devices("GPU"):
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            capabilities.append(tuple(capability) if capability else (0, 0))
        return cls(tuple(capabilities))


@dataclasses.dataclass(frozen=True)
class Choice:
    precision: str  # a Keras dtype policy name: float32, mixed_float16 or mixed_bfloat16
    jit_compile: bool
    reason: str  # why XLA is on or off

    def describe(self) -> str:
        loss_scaling = " with loss scaling" if self.precision == MIXED_FLOAT16 else ""
        return f"precision {self.precision}{loss_scaling}; XLA {'on' if self.jit_compile else 'off'} ({self.reason})"


def resolve(precision: str, jit_compile: str, devices: Devices, replicas: int = 1) -> Choice:
    """The policy and XLA setting the parameters mean on ``devices``, for a
    strategy of ``replicas`` replicas (values already validated)."""
    gpus = devices.gpu_compute_capabilities
    if precision == AUTO:
        if not gpus:
            precision = FLOAT32
        elif min(gpus) >= BFLOAT16_COMPUTE_CAPABILITY:
            precision = MIXED_BFLOAT16
        else:
            precision = MIXED_FLOAT16
    if replicas > 1:
        return Choice(precision, False, f"{replicas} replicas: Keras 3 cannot compile a distributed step")
    if jit_compile == AUTO:
        return Choice(precision, bool(gpus), "auto: on a GPU" if gpus else "auto: off on the CPU")
    return Choice(precision, jit_compile == "true", "as asked")


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy is ``name`` while models are built inside;
    the one before is restored after (it is process-wide)."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def recast(model: keras.Model, name: str, keep_float32: Sequence[str] = ()) -> keras.Model:
    """``model`` with every layer computing in policy ``name``, those named in
    ``keep_float32`` (the logits layer) in float32. A model built under the
    policy has it already and is returned as is; one that was not (an earlier
    model continued from, trained in another precision) is rebuilt from its
    configuration with the policy and given the same weights."""

    def wanted(layer_name: str) -> str:
        return FLOAT32 if layer_name in keep_float32 else name

    layers = [layer for layer in compat.all_layers(model) if not isinstance(layer, keras.layers.InputLayer)]
    if all(layer.dtype_policy.name == wanted(layer.name) for layer in layers):
        return model

    def rewrite(node):
        if isinstance(node, dict):
            settings = node.get("config")
            if isinstance(settings, dict) and isinstance(settings.get("dtype"), dict) \
                    and settings["dtype"].get("class_name") == "DTypePolicy":
                settings["dtype"] = keras.saving.serialize_keras_object(
                    keras.DTypePolicy(wanted(settings.get("name", ""))))
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    config = keras.saving.serialize_keras_object(model)
    rewrite(config)
    with policy(name):
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def with_loss_scaling(optimizer: keras.optimizers.Optimizer, name: str) -> keras.optimizers.Optimizer:
    """float16 gradients underflow without loss scaling: the optimizer wrapped
    in a LossScaleOptimizer under mixed_float16 (what Keras' compile does only
    when the model's own policy says so)."""
    if name != MIXED_FLOAT16 or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)
