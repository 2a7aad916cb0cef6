"""Training: the loop (``loop``), its callbacks, the six optimizers and the
batch-norm recalibration. ``train`` is the entry point."""

from kic.training.loop import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
