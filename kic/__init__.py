"""kic: transfer learning of image classifiers as Kubeflow Pipelines components."""

__version__ = "0.1.0"
