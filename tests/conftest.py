import os

# Keep TensorFlow quiet and deterministic-ish on the 2-core CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

pytest_plugins = ["gcs_emulator"]
