"""The quality gate in real local pipeline runs: a gate that passes (and the
optional batch prediction after export), one that blocks, one against a baseline."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from kic.demo_data import write_demo_dataset

FAST = ["--param", "backbone=mobilenet_v3_small_100_224", "--param", "pretrained_weights=none",
        "--param", "image_size=32", "--param", "image_short_side=48", "--param", "epochs=3",
        "--param", "batch_size=8", "--param", "learning_rate=0.003"]


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_blocking_gate_stops_the_export(data):
    output = data / "block"
    log = _run(data / "images", output, "--param", "gate_minimum=1.01")
    blessing = json.loads((output / "blessing.json").read_text())
    assert blessing["blessed"] is False and "1.01" in " ".join(blessing["reasons"])
    assert not (output / "model.tar.gz").exists() and not (output / "model").exists()
    assert "not exported" in log


@pytest.mark.slow
def test_a_gate_against_a_baseline_compares_on_the_same_data(data, passing_run):
    baseline_output, _ = passing_run
    baseline_accuracy = json.loads((baseline_output / "metrics.json").read_text())["accuracy"]
    output = data / "baseline"
    # A model that cannot learn (learning rate 0) against the trained baseline.
    _run(data / "images", output, "--param", f"baseline_model_uri={baseline_output / 'model.tar.gz'}",
         "--param", "learning_rate=0", "--param", "max_regression=0.0")
    blessing = json.loads((output / "blessing.json").read_text())
    accuracy = json.loads((output / "metrics.json").read_text())["accuracy"]
    assert blessing["baseline_value"] == pytest.approx(baseline_accuracy)  # same split, same metric
    assert blessing["value"] == pytest.approx(accuracy)
    assert blessing["blessed"] is (accuracy >= baseline_accuracy)
    assert any("baseline" in reason for reason in blessing["reasons"])
    assert (output / "model.tar.gz").exists() is blessing["blessed"]
