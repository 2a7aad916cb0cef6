"""Batch prediction over folders, manifests and GCS, with bad files in the mix."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from image_fixtures import HTML_PAGE, encode, noise_image, noise_jpeg, png_header_only, solid_jpeg, truncated
from PIL import Image

from kic import artifacts, storage
from kic.errors import DataError, ParameterError
from kic.serving import predict

CLASSES = ("circle", "square", "triangle")

GOOD = {
    "a/red.jpg": solid_jpeg(),
    "a/b/noise.png": encode(noise_image((30, 20), seed=2), "PNG"),
    "c.gif": encode(noise_image((30, 20), seed=3).convert("P"), "GIF"),
    "d.BMP": encode(noise_image((30, 20), seed=4), "BMP"),
    "e.webp": encode(noise_image((30, 20), seed=5), "WEBP", lossless=True),
}
BAD = {
    "bad/error_page.jpg": HTML_PAGE,
    "bad/empty.png": b"",
    "bad/truncated.jpg": truncated(noise_jpeg(), 0.3),
    "bad/bomb.png": png_header_only(30000, 30000),
}


@pytest.fixture(scope="module")
def package(exported) -> str:
    """The session's exported package (conftest.py), trained on the demo shapes."""
    return exported.package_dir


@pytest.fixture
def images(tmp_path) -> str:
    folder = tmp_path / "images"
    for name, content in {**GOOD, **BAD, "notes.txt": b"not an image"}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return str(folder)


@pytest.fixture(scope="module")
def signature_probabilities(package):
    """The package's own signature, loaded once: content -> probabilities."""
    serve = tf.saved_model.load(os.path.join(package, "1")).signatures["serving_default"]
    return lambda content: serve(image_bytes=tf.constant([content]))["probabilities"].numpy()[0]


def read_jsonl(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_folder_to_jsonl_with_bad_files(package, images, tmp_path, signature_probabilities):
    output = str(tmp_path / "out" / "predictions.jsonl")
    # batch_size 3 puts good and bad files in the same batch.
    summary = predict.predict(package, images, output, batch_size=3, top_k=2)
    rows = read_jsonl(output)
    expected_files = sorted(os.path.join(images, name) for name in {**GOOD, **BAD})
    assert [row["file"] for row in rows] == expected_files
    by_name = {os.path.relpath(row["file"], images): row for row in rows}
    for name, content in GOOD.items():
        row = by_name[name]
        assert row["status"] == "ok"
        assert list(row["probabilities"]) == list(CLASSES)
        np.testing.assert_allclose(list(row["probabilities"].values()),
                                   signature_probabilities(content), atol=1e-5)
        assert row["predicted_label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["predicted_label"]
    assert by_name["bad/empty.png"]["error"] == "empty file"
    assert "unknown image file format" in by_name["bad/error_page.jpg"]["error"].lower()
    assert by_name["bad/truncated.jpg"]["status"] == "error"
    assert by_name["bad/bomb.png"]["error"].startswith("too many pixels")
    assert all("Graph execution" not in by_name[name]["error"] for name in BAD)

    assert (summary.total, summary.succeeded, summary.failed, summary.skipped_files) == (9, 5, 4, 1)
    assert {file for file, _ in summary.errors} == {os.path.join(images, name) for name in BAD}
    assert sum(summary.label_counts.values()) == 5
    text = predict.format_summary(summary)
    assert "5 ok, 4 failed" in text and "error_page.jpg" in text and "Skipped 1" in text


def test_binary_mode_rows_carry_the_positive_class_probability(images, tmp_path):
    """The row's probabilities are the signature's single number, named by the positive class."""
    from test_export import build_model_dir

    from kic.serving import export

    model_dir = build_model_dir(str(tmp_path / "model"), binary=True, seed=3)
    package = export.export_model(model_dir, str(tmp_path / "package")).package_dir
    yellow = encode(Image.new("RGB", (30, 20), (255, 255, 0)), "PNG")  # a "cat" for this model; the rest are "dog"
    with open(os.path.join(images, "yellow.png"), "wb") as handle:
        handle.write(yellow)
    output = str(tmp_path / "predictions.jsonl")
    predict.predict(package, images, output, top_k=5)
    serve = tf.saved_model.load(os.path.join(package, "1")).signatures["serving_default"]
    rows = {os.path.relpath(row["file"], images): row for row in read_jsonl(output)}
    for name, content in {**GOOD, "yellow.png": yellow}.items():
        row = rows[name]
        positive = float(serve(image_bytes=tf.constant([content]))["probabilities"].numpy()[0, 0])
        assert row["probabilities"] == {"dog": pytest.approx(positive, abs=1e-5)}
        assert row["predicted_label"] == ("dog" if positive > 0.5 else "cat")
        assert row["score"] == pytest.approx(max(positive, 1 - positive), abs=1e-5)
        assert [entry["label"] for entry in row["top_k"]] == [row["predicted_label"],
                                                              ({"cat", "dog"} - {row["predicted_label"]}).pop()]
    assert {row["predicted_label"] for row in rows.values() if row["status"] == "ok"} == {"cat", "dog"}


def test_csv_output(package, images, tmp_path):
    output = str(tmp_path / "predictions.csv")
    predict.predict(package, images, output, output_format="csv")
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and set(rows[0]) == set(predict.CSV_COLUMNS)
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 5
    for row in ok:
        probabilities = json.loads(row["probabilities"])
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert json.loads(row["top_k"])[0]["label"] == row["predicted_label"]
        assert float(row["score"]) == pytest.approx(max(probabilities.values()), abs=1e-6)
    assert {row["error"] != "" for row in rows if row["status"] == "error"} == {True}


def test_package_savedmodel_dir_and_tarball_give_the_same_predictions(package, images, tmp_path):
    results = []
    for model_path in (package, os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR),
                       os.path.join(package, artifacts.MODEL_TARBALL)):
        output = str(tmp_path / f"{len(results)}.jsonl")
        predict.predict(model_path, os.path.join(images, "a"), output)
        results.append(read_jsonl(output))
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 2


def test_savedmodel_without_label_map_uses_the_labels_inside(package, images, tmp_path):
    bare = tmp_path / "bare"
    storage.copy_dir(os.path.join(package, "1"), str(bare))
    output = str(tmp_path / "out.jsonl")
    predict.predict(str(bare), os.path.join(images, "a"), output)
    assert {label for row in read_jsonl(output) for label in row["probabilities"]} == set(CLASSES)


@pytest.mark.parametrize("manifest_name, text", [
    ("list.txt", "a/red.jpg\n\nc.gif\nbad/empty.png\n"),
    ("list.csv", "uri,comment\na/red.jpg,x\nc.gif,y\nbad/empty.png,z\n"),
    ("list.jsonl", '{"uri": "a/red.jpg"}\n{"uri": "c.gif"}\n{"uri": "bad/empty.png"}\n'),
])
def test_manifests_resolve_relative_entries(package, images, tmp_path, manifest_name, text):
    manifest = os.path.join(images, manifest_name)
    with open(manifest, "w") as handle:
        handle.write(text)
    output = str(tmp_path / "out.jsonl")
    summary = predict.predict(package, manifest, output)
    rows = read_jsonl(output)
    assert [os.path.relpath(row["file"], images) for row in rows] == ["a/red.jpg", "c.gif", "bad/empty.png"]
    assert [row["status"] for row in rows] == ["ok", "ok", "error"]
    assert summary.failed == 1


def test_unreadable_manifest_entry_is_an_error_row(package, images, tmp_path):
    manifest = os.path.join(images, "list.txt")
    with open(manifest, "w") as handle:
        handle.write("a/red.jpg\nmissing.jpg\n")
    output = str(tmp_path / "out.jsonl")
    predict.predict(package, manifest, output)
    rows = read_jsonl(output)
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "error" and rows[1]["error"].startswith("unreadable")


def test_gcs_model_inputs_and_output(package, images, gcs_emulator, signature_probabilities):
    bucket = gcs_emulator.new_bucket()
    storage.copy_file(os.path.join(package, artifacts.MODEL_TARBALL), f"{bucket}/models/model.tar.gz")
    storage.upload_dir(os.path.join(images, "a"), f"{bucket}/images")
    summary = predict.predict(f"{bucket}/models/model.tar.gz", f"{bucket}/images", f"{bucket}/out/p.jsonl")
    rows = [json.loads(line) for line in storage.read_text(f"{bucket}/out/p.jsonl").splitlines()]
    assert [row["file"] for row in rows] == [f"{bucket}/images/b/noise.png", f"{bucket}/images/red.jpg"]
    assert summary.succeeded == 2
    np.testing.assert_allclose(list(rows[1]["probabilities"].values()),
                               signature_probabilities(GOOD["a/red.jpg"]), atol=1e-5)


def test_an_object_over_the_byte_limit_is_an_error_row_without_being_downloaded(package, images, gcs_emulator,
                                                                               monkeypatch):
    bucket = gcs_emulator.new_bucket()
    storage.upload_dir(os.path.join(images, "a"), f"{bucket}/images")
    storage.write_bytes(f"{bucket}/images/clip.jpg", os.urandom(300_000))
    monkeypatch.setattr(predict, "MAX_BYTES", 200_000)
    summary = predict.predict(package, f"{bucket}/images", f"{bucket}/out/p.jsonl")
    assert summary.succeeded == 2 and dict(summary.errors) == {
        f"{bucket}/images/clip.jpg": "too large: more than 200,000 bytes"}


def test_bad_arguments_are_clear(package, images, tmp_path):
    with pytest.raises(ParameterError, match="output_format"):
        predict.predict(package, images, str(tmp_path / "x"), output_format="parquet")
    with pytest.raises(predict.PredictInputError, match="inputs not found"):
        predict.predict(package, str(tmp_path / "nowhere"), str(tmp_path / "x"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(predict.PredictInputError, match="no images found"):
        predict.predict(package, str(empty), str(tmp_path / "x"))
    with pytest.raises(predict.PredictInputError, match="model not found"):
        predict.predict(str(tmp_path / "no-model"), images, str(tmp_path / "x"))
    with pytest.raises(predict.PredictInputError, match="no SavedModel"):
        predict.predict(images, images, str(tmp_path / "x"))
    not_a_tarball = tmp_path / "model.tar.gz"
    not_a_tarball.write_bytes(b"junk")
    with pytest.raises(DataError, match="not a tar archive"):
        predict.predict(str(not_a_tarball), images, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_summary_as_dict_is_json(package, images, tmp_path):
    summary = predict.predict(package, images, str(tmp_path / "p.jsonl"))
    payload = json.loads(json.dumps(summary.to_dict()))
    assert payload["failed"] == 4 and {entry["file"] for entry in payload["errors"]} == {
        os.path.join(images, name) for name in BAD}
