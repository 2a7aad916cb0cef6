"""The quality gate in real local pipeline runs: a model that passes is exported
and predicts in batch; a model that falls short of its baseline is evaluated on
the same images, blocked, and neither exported nor used for predictions."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from kic.demo_data import write_demo_dataset

pytestmark = pytest.mark.slow

# Enough to learn the demo shapes from scratch in seconds (the first epoch is
# mostly tracing). On CPU a seeded run is repeatable, so the outcome is too.
FAST = ["--param", "backbone=mobilenet_v3_small_100_224", "--param", "pretrained_weights=none",
        "--param", "image_size=32", "--param", "image_short_side=48", "--param", "epochs=20",
        "--param", "batch_size=8", "--param", "learning_rate=0.01"]


def _run(data, output, *params):
    result = subprocess.run([sys.executable, "-m", "kic.cli", "run", "--data", str(data), "--output", str(output),
                             *FAST, *params], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    write_demo_dataset(str(root / "images"), images_per_class=20, size=48)
    to_predict = root / "to-predict"
    to_predict.mkdir()
    for name in ("circle_0000.png", "circle_0001.png"):
        (to_predict / name).write_bytes((root / "images" / "circle" / name).read_bytes())
    Image.new("RGB", (40, 40), (0, 200, 0)).save(to_predict / "green.jpg")
    (to_predict / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


@pytest.fixture(scope="module")
def passing_run(data):
    output = data / "pass"
    log = _run(data / "images", output, "--param", f"batch_predict_source={data / 'to-predict'}")
    return output, log


def test_a_passing_gate_exports_and_runs_the_batch_prediction(passing_run):
    output, log = passing_run
    blessing = json.loads((output / "blessing.json").read_text())
    assert blessing["blessed"] is True and blessing["baseline_value"] is None
    assert (output / "model.tar.gz").is_file()
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    by_file = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_file["broken.png"]["status"] == "error" and by_file["broken.png"]["error"]
    assert all(by_file[name]["status"] == "ok" for name in ("circle_0000.png", "circle_0001.png", "green.jpg"))
    assert set(by_file["green.jpg"]["probabilities"]) == {"circle", "square", "triangle"}


def test_a_model_worse_than_its_baseline_is_blocked_on_the_same_images(data, passing_run):
    baseline_output, _ = passing_run
    baseline_accuracy = json.loads((baseline_output / "metrics.json").read_text())["accuracy"]
    assert baseline_accuracy >= 0.6  # the premise: a baseline that learned
    output = data / "worse"
    # learning_rate 0: the model stays at its random initialisation.
    log = _run(data / "images", output, "--param", f"baseline_model_uri={baseline_output / 'model.tar.gz'}",
               "--param", "learning_rate=0", "--param", "max_regression=0.0",
               "--param", f"batch_predict_source={data / 'to-predict'}")
    blessing = json.loads((output / "blessing.json").read_text())
    accuracy = json.loads((output / "metrics.json").read_text())["accuracy"]
    assert blessing["baseline_value"] == pytest.approx(baseline_accuracy)  # the baseline, on this run's test images
    assert blessing["value"] == pytest.approx(accuracy) and accuracy < baseline_accuracy
    assert blessing["blessed"] is False
    assert any("worse than the baseline" in reason for reason in blessing["reasons"])
    assert not (output / "model.tar.gz").exists() and not (output / "model").exists()
    assert not (output / "predictions.jsonl").exists()
    assert "not exported" in log
