"""The reference algorithm's six optimizers, each built from its own parameters only."""

from __future__ import annotations

import keras

from kic.config import TrainingConfig


def build_optimizer(config: TrainingConfig) -> keras.optimizers.Optimizer:
    name, lr = config.optimizer, config.learning_rate
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, beta_1=config.beta_1, beta_2=config.beta_2,
                                     epsilon=config.epsilon)
    if name in ("sgd", "nesterov"):
        return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum,
                                    nesterov=name == "nesterov")
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, rho=config.rho, momentum=config.momentum,
                                        epsilon=config.epsilon)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=lr,
                                        initial_accumulator_value=config.initial_accumulator_value,
                                        epsilon=config.epsilon)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=lr, rho=config.rho, epsilon=config.epsilon)
    raise AssertionError(f"unreachable: TrainingConfig validated optimizer {name!r}")
