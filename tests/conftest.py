"""Shared fixtures: one prepared dataset, one trained model and one exported
package per test run, on a tiny test-only backbone where MobileNet is not the
point. Made once, used by every module that needs them."""

import os

# Keep TensorFlow quiet and deterministic-ish on the 2-core CI machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import dataclasses  # noqa: E402

import pytest  # noqa: E402

pytest_plugins = ["gcs_emulator", "s3_server", "api_standins", "kfp_local_runs"]

# Workers for `-n auto` (pyproject.toml's addopts). The fast suite spends most of its time in one-threaded
# Python, so a worker per core pays (on 2 cores: 4:04 in one process, 2:32 on two); each worker holds its own
# TensorFlow and session fixtures (about 2 GB), hence the cap. The slow tests run one at a time: each is a
# whole pipeline run that keeps every core busy. One test file runs in one process too: starting workers
# costs more than they save there.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    selection = config.option.markexpr
    if "slow" in selection and "not slow" not in selection:
        return 0
    named = {argument.split("::")[0] for argument in config.args}
    if len(named) == 1 and os.path.isfile(next(iter(named))):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


@dataclasses.dataclass(frozen=True)
class Trained:
    model_dir: str
    result: object  # kic.training.TrainResult
    log: tuple[str, ...]


@pytest.fixture(scope="session")
def tiny_backbone():
    """The name of the test-only backbone (tests/tiny_backbone.py), registered for the session."""
    import tiny_backbone

    with tiny_backbone.registered() as name:
        yield name


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> str:
    """The demo shapes, 16 images per class, prepared into train/validation/test (8/4/4 per class)."""
    from kic.data.prepare import PrepareOptions, prepare_dataset
    from kic.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("prepared")
    write_demo_dataset(str(root / "images"), images_per_class=16, size=40)
    prepare_dataset(PrepareOptions(source=str(root / "images"), output_dir=str(root / "prepared"),
                                   validation_fraction=0.25, test_fraction=0.25, image_short_side=40, workers=1))
    return str(root / "prepared")


@pytest.fixture(scope="session")
def trained(prepared, tiny_backbone, tmp_path_factory) -> Trained:
    """The tiny backbone trained for 2 epochs on ``prepared``."""
    import tiny_backbone as tiny

    from kic.config import TrainingConfig
    from kic.training import train

    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    lines: list[str] = []
    result = train(prepared, model_dir, TrainingConfig(epochs=2, batch_size=8, learning_rate=0.01),
                   tiny.train_options(tiny_backbone), log=lines.append)
    return Trained(model_dir=model_dir, result=result, log=tuple(lines))


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """``trained`` exported as a serving package (kic.serving.export.ExportResult)."""
    from kic.serving.export import ExportOptions, export_model

    return export_model(trained.model_dir, str(tmp_path_factory.mktemp("package") / "package"), ExportOptions())


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, and no proxy between us and loopback."""
    from keras.src.backend import config

    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "keras-home").mkdir()
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    return tmp_path / "keras-home"
