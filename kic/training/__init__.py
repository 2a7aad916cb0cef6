"""Training: the loop (``loop``), its callbacks, the six optimizers, the
batch-norm recalibration, the strategy over replicas and machines
(``distribution``) and the numeric precision and XLA (``precision``).
``train`` is the entry point."""

from kic.training.loop import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
