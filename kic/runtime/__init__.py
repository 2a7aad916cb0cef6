"""What runs inside a step's container: the body of every component (steps), TensorFlow started
without its noise (quiet_startup), and Kubeflow Pipelines' own artifact store (kfp_artifact_store)."""
