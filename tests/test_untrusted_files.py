"""Files that must neither crash nor hang a step or the served model (issue 20):
animated WebP (TensorFlow's WebP decoder corrupts the heap on one), FIFOs,
devices, huge sparse files, archive bombs, packages that are not kic exports.

Whatever runs a TensorFlow decoder on such a file runs in a subprocess, so a
heap corruption fails the test instead of killing pytest.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from image_fixtures import (
    BLUE,
    GREEN,
    MALFORMED_SEEDS,
    RED,
    animated_gif,
    encode,
    gif_frame_bomb,
    malformed_corpus,
    solid_jpeg,
)
from PIL import Image

from kic import artifacts, storage
from kic.data.images import ImageRejected, RejectReason, normalize_image, read_image_file
from kic.errors import DataError
from kic.serving import predict

SPARSE_SIZE = 3 * 1024**3


def animated_webp(lossless: bool = False) -> bytes:
    """Red, then green, then blue: a server that decodes past the first frame is seen."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0,
                  lossless=lossless)


@pytest.fixture(scope="module")
def package(exported) -> str:
    return exported.package_dir


def _special_files(folder) -> dict[str, str]:
    """A FIFO, a symlink to /dev/zero and a sparse 3 GB file (no disk), all named as images."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    with open(folder / "huge.jpg", "wb") as handle:
        handle.truncate(SPARSE_SIZE)
    return {name: str(folder / f"{name}.jpg") for name in ("fifo", "zero", "huge")}


@pytest.fixture
def special_files(tmp_path) -> dict[str, str]:
    return _special_files(tmp_path / "special")


# --- 1. animated WebP, special files and the fuzz corpus, served -------------------------------
# One subprocess for every check that runs TensorFlow's decoders on hostile files: it
# costs TensorFlow's import once (seconds), and a heap corruption in it fails these tests.

SERVED_SCRIPT = """
import json, resource, sys, time
import numpy as np, tensorflow as tf
from kic.model import preprocessing
from kic.serving import predict
package, folder, inputs_file, corpus_file, output, source, prepared, bomb, gif_frames = sys.argv[1:10]
answer = {}
serve = tf.saved_model.load(package + "/1").signatures["serving_default"]

inputs = [bytes.fromhex(raw) for raw in json.load(open(inputs_file))]
answer["probabilities"] = serve(image_bytes=tf.constant(inputs))["probabilities"].numpy().tolist()
answer["decoded"] = [preprocessing.decode_rgb(tf.constant(raw)).numpy().tolist() for raw in inputs]

started = time.monotonic()
summary = predict.predict(package, folder, output)  # batch predict's code, on the special files
answer["predict_seconds"] = time.monotonic() - started
answer["predict_errors"] = dict(summary.errors)
answer["single_fifo"] = dict(predict.predict(package, folder + "/fifo.jpg", output).errors)
try:
    predict.predict(package, folder + "/list.csv", output)
except predict.PredictInputError as error:
    answer["fifo_manifest"] = str(error)

from kic.data.prepare import PrepareOptions, prepare_dataset
started = time.monotonic()
prepare_dataset(PrepareOptions(source=source, output_dir=prepared, validation_fraction=0.25, test_fraction=0.25,
                               image_short_side=40, workers=1, max_rejected_fraction=0.9))
answer["prepare_seconds"] = time.monotonic() - started

started, results, good = time.monotonic(), {}, []
for name, raw in ((name, bytes.fromhex(raw)) for name, raw in json.load(open(corpus_file))):
    try:
        probabilities = serve(image_bytes=tf.constant([raw]))["probabilities"].numpy()[0]
    except tf.errors.OpError as error:
        results[name] = {"error": predict.decoder_reason(error.message)}
    else:
        results[name] = {"probabilities": probabilities.tolist()}
        good.append((name, raw))
batch = serve(image_bytes=tf.constant([raw for _, raw in good]))["probabilities"].numpy()
answer["corpus"] = results
answer["batch_difference"] = max(float(np.abs(batch[index] - results[name]["probabilities"]).max())
                                 for index, (name, _) in enumerate(good))
answer["corpus_seconds"] = time.monotonic() - started
try:
    serve(image_bytes=tf.constant([open(bomb, "rb").read()]))
except tf.errors.OpError as error:
    answer["bomb"] = predict.decoder_reason(error.message)
answer["gif_frames"] = serve(image_bytes=tf.constant([open(gif_frames, "rb").read()]))["probabilities"].shape[0]
answer["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(answer))
"""


def animated_on_canvas(alpha: bool) -> bytes:
    """The lossless animated WebP on a canvas twice as wide as its frames, declaring alpha or not."""
    raw = bytearray(animated_webp(lossless=True))
    raw[24:27] = (79).to_bytes(3, "little")  # canvas 80 wide: the 40-wide first frame covers its left half
    if alpha:
        raw[20] |= 0x10
    return bytes(raw)


INPUTS = {
    "animated": animated_webp(),
    "animated_lossless": animated_webp(lossless=True),
    "first_frame": encode(Image.new("RGB", (40, 30), RED), "WEBP", lossless=True),
    "animated_gif": animated_gif((RED, GREEN, BLUE)),
    "canvas": animated_on_canvas(alpha=False),
    "canvas_alpha": animated_on_canvas(alpha=True),
}


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("served")
    folder = root / "special"
    _special_files(folder)
    (folder / "anim.webp").write_bytes(animated_webp())
    (folder / "anim.gif").write_bytes(animated_gif())
    (folder / "red.jpg").write_bytes(solid_jpeg())
    os.mkfifo(folder / "list.csv")
    (root / "inputs.json").write_text(json.dumps([raw.hex() for raw in INPUTS.values()]))
    (root / "corpus.json").write_text(json.dumps([[name, raw.hex()] for name, raw in malformed_corpus()]))
    source = root / "source"
    for label, colour in (("a", RED), ("b", BLUE)):
        (source / label).mkdir(parents=True)
        for index in range(4):
            (source / label / f"{index}.jpg").write_bytes(solid_jpeg(colour, size=(40 + index, 30)))
    _special_files(source / "a")
    bomb = root / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(bomb)  # 90 million pixels in about 10 KB
    gif_frames = root / "frames.gif"
    gif_frames.write_bytes(gif_frame_bomb(2000))  # 3.7 MB: 2,000 frames of a million pixels
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Bounded, so that a regression that reads /dev/zero fails here instead of filling the machine's memory.
    result = subprocess.run([sys.executable, "-c", SERVED_SCRIPT, exported.package_dir, str(folder),
                             str(root / "inputs.json"), str(root / "corpus.json"), str(root / "predictions.jsonl"),
                             str(source), str(root / "prepared"), str(bomb), str(gif_frames)],
                            capture_output=True, text=True, timeout=240, env=env,
                            preexec_fn=lambda: _limit_memory(6 * 1024**3))
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    answer["prepare_report"] = json.loads((root / "prepared" / artifacts.DATA_REPORT_JSON).read_text())
    answer["probabilities"] = dict(zip(INPUTS, answer["probabilities"], strict=True))
    answer["decoded"] = {name: np.array(image, np.uint8) for name, image in zip(INPUTS, answer["decoded"],
                                                                                strict=True)}
    return answer


def test_serving_signature_answers_an_animated_webp_from_its_first_frame(served):
    """Served from its first frame (red), as the same frame alone and as prepare stores it."""
    probabilities = {name: np.array(values) for name, values in served["probabilities"].items()}
    np.testing.assert_allclose(probabilities["animated_lossless"], probabilities["first_frame"], atol=1e-6)
    np.testing.assert_allclose(probabilities["animated"], probabilities["first_frame"], atol=0.05)
    for name in ("animated", "animated_lossless", "animated_gif"):
        pixel = served["decoded"][name][15, 20].astype(int)
        assert pixel[0] >= 250 and pixel[1] <= 5 and pixel[2] <= 5, (name, pixel)
        kept = np.asarray(Image.open(io.BytesIO(normalize_image(INPUTS[name]).jpeg)))
        assert np.abs(kept.astype(int) - served["decoded"][name]).max() <= 3, name


@pytest.mark.parametrize(("name", "uncovered"), [("canvas", (0, 0, 0)), ("canvas_alpha", (255, 255, 255))])
def test_a_first_frame_smaller_than_its_canvas_is_placed_as_pillow_places_it(served, name, uncovered):
    """Where no frame covers the canvas it is transparent: black when the file
    declares no alpha (Pillow opens it as RGB), else composited on white."""
    decoded = served["decoded"][name]
    kept = np.asarray(Image.open(io.BytesIO(normalize_image(INPUTS[name]).jpeg)))
    assert decoded.shape == kept.shape == (30, 80, 3)
    assert decoded[15, 10].tolist() == [255, 0, 0] and decoded[15, 60].tolist() == list(uncovered)
    assert np.abs(kept.astype(int) - decoded).max() <= 3


def test_batch_predict_rejects_special_files_at_once_in_bounded_memory(served):
    """A FIFO, a symlink to /dev/zero and a sparse 3 GB file beside animated
    files: each an error row with its reason, within seconds; the process's
    peak memory (TensorFlow and the model included) stays far below the 3 GB
    file (it read the whole file before, peaking at 22.9 GB)."""
    errors = {os.path.basename(file): reason for file, reason in served["predict_errors"].items()}
    assert set(errors) == {"fifo.jpg", "zero.jpg", "huge.jpg"}
    assert "FIFO" in errors["fifo.jpg"]
    assert "character device" in errors["zero.jpg"] and "symbolic link" in errors["zero.jpg"]
    assert "3,221,225,472 bytes, over the limit" in errors["huge.jpg"]
    assert served["predict_seconds"] < 10
    assert served["peak_bytes"] < 2.5 * 1024**3, f"peak {served['peak_bytes'] / 1024**3:.2f} GiB"


def test_serving_signature_refuses_a_decompression_bomb_by_its_header(served):
    """A PNG that declares 90 million pixels is refused with its size before it is decoded (decoding it
    would take gigabytes for one request); the peak memory test above covers the process."""
    assert served["bomb"] == ("assertion failed: [the image header declares 10000 x 9000 pixels, "
                              "more than the 89,478,485 kic decodes]")


def test_serving_signature_answers_a_gif_of_thousands_of_frames_from_its_first_in_bounded_memory(served):
    """Each frame within the pixel limit, 2 GB decoded whole: the peak memory test above covers the
    process, which answers it from its first frame."""
    assert served["gif_frames"] == 1


def test_fuzz_serving_signature_survives_the_corpus(served):
    """The fuzz corpus (tests/test_fuzz.py) through the signature, each input
    on its own, then the decodable ones in one batch: each is answered with
    finite probabilities or refused with the decoder's reason, the unmutated
    files (animated WebP included) are all answered, and the batch agrees."""
    results = served["corpus"]
    assert set(results) == {name for name, _ in malformed_corpus()}
    for name, outcome in results.items():
        if "error" in outcome:
            assert outcome["error"].strip(), name
        else:
            assert all(math.isfinite(value) and 0 <= value <= 1 for value in outcome["probabilities"]), name
    assert all("probabilities" in results[name] for name in MALFORMED_SEEDS)
    assert sum("error" in outcome for outcome in results.values()) >= 50
    assert served["batch_difference"] < 1e-5
    assert served["corpus_seconds"] < 60


@pytest.mark.slow
def test_kic_predict_command_on_animated_and_special_files(exported, tmp_path):
    """The `kic predict` command itself, in its own process: exit 0, the same rows."""
    folder = tmp_path / "special"
    _special_files(folder)
    (folder / "anim.webp").write_bytes(animated_webp())
    (folder / "red.jpg").write_bytes(solid_jpeg())
    output = tmp_path / "predictions.jsonl"
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kic"), "predict", exported.package_dir,
                             str(folder), "--output", str(output)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {os.path.basename(row["file"]): row for row in map(json.loads, output.read_text().splitlines())}
    assert {name for name, row in rows.items() if row["status"] == "ok"} == {"anim.webp", "red.jpg"}
    assert {name for name, row in rows.items() if row["status"] == "error"} == {"fifo.jpg", "zero.jpg", "huge.jpg"}


def test_a_single_fifo_given_to_predict_is_an_error_row_not_a_hang(served):
    assert ["FIFO" in reason for reason in served["single_fifo"].values()] == [True]
    assert "is not a regular file" in served["fifo_manifest"]  # a FIFO named .csv: not read as a manifest


# --- 2. a file's type and size before it is read -------------------------------------------------

READ_SCRIPT = """
import json, sys, time
from kic.data.images import ImageRejected, read_image_file
results = {}
for path in sys.argv[1:]:
    started = time.monotonic()
    try:
        results[path] = {"bytes": len(read_image_file(path, 50 * 1024**2))}
    except ImageRejected as rejection:
        results[path] = {"reason": rejection.reason.value, "detail": rejection.detail}
    results[path]["seconds"] = time.monotonic() - started
print(json.dumps(results))
"""


def test_read_image_file_rejects_special_files_at_once(special_files, tmp_path):
    """Each rejected with its reason in well under a second. In a subprocess
    with 1 GiB of address space and a time limit: a regression that reads
    the FIFO or /dev/zero fails the test instead of hanging or filling memory."""
    good = tmp_path / "red.jpg"
    good.write_bytes(solid_jpeg())
    paths = [*special_files.values(), str(tmp_path), str(good)]
    result = subprocess.run([sys.executable, "-c", READ_SCRIPT, *paths], capture_output=True, text=True, timeout=20,
                            preexec_fn=lambda: _limit_memory(1024**3))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout)
    expected = {special_files["fifo"]: ("not_a_file", "FIFO (named pipe)"),
                special_files["zero"]: ("not_a_file", "character device (through a symbolic link)"),
                special_files["huge"]: ("too_large", "3,221,225,472 bytes, over the limit of 52,428,800"),
                str(tmp_path): ("not_a_file", "a folder")}
    for path, (reason, words) in expected.items():
        assert results[path]["reason"] == reason and words in results[path]["detail"], results[path]
        assert results[path]["seconds"] < 0.5
    assert results[str(good)]["bytes"] == len(solid_jpeg())


def test_read_image_file_reads_at_most_the_limit(tmp_path):
    good = tmp_path / "red.jpg"
    good.write_bytes(solid_jpeg())
    assert read_image_file(str(good)) == solid_jpeg()
    with pytest.raises(ImageRejected, match="over the limit of 100 bytes") as caught:
        read_image_file(str(good), 100)
    assert caught.value.reason == RejectReason.TOO_LARGE


def test_prepare_rejects_special_files_with_their_reasons(served):
    rejected = {os.path.basename(entry["file"]): entry for entry in served["prepare_report"]["rejected"]["files"]}
    assert rejected["fifo.jpg"]["reason"] == "not_a_file" and "FIFO" in rejected["fifo.jpg"]["detail"]
    assert rejected["zero.jpg"]["reason"] == "not_a_file" and "character device" in rejected["zero.jpg"]["detail"]
    assert rejected["huge.jpg"]["reason"] == "too_large" and "3,221,225,472" in rejected["huge.jpg"]["detail"]
    assert served["prepare_seconds"] < 30


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# --- 3. archive bombs ------------------------------------------------------------------------------

def test_an_archive_member_declaring_2_gb_is_refused_before_any_byte_is_written(tmp_path):
    """A tar header that declares 2 GB of data, in a tiny .tar.gz (a gzip of
    zeros would expand 1,000-fold the same way): refused from its header."""
    header = tarfile.TarInfo("1/variables/variables.data-00000-of-00001")
    header.size = 2 * 1024**3
    bomb = tmp_path / "model.tar.gz"
    bomb.write_bytes(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024 * 1024)))
    destination = tmp_path / "out"
    with pytest.raises(DataError, match="unpacks to more than .* declares 2,147,483,648"):
        storage.extract_tarball(str(bomb), str(destination))
    assert not any(files for _, _, files in os.walk(destination))


def test_archive_limits_on_real_data_and_a_cut_archive(tmp_path):
    archive_path = tmp_path / "model.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for name in ("a", "b"):
            data = os.urandom(600_000)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="unpacks to more than 1,000,000 bytes"):
        storage.extract_tarball(str(archive_path), str(tmp_path / "small"), max_bytes=1_000_000)
    with pytest.raises(DataError, match="more than 1 archive members"):
        storage.extract_tarball(str(archive_path), str(tmp_path / "few"), max_members=1)
    assert storage.extract_tarball(str(archive_path), str(tmp_path / "ok")) == str(tmp_path / "ok")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive_path.read_bytes()[:300_000])
    with pytest.raises(DataError, match="damaged or cut short"):
        storage.extract_tarball(str(cut), str(tmp_path / "cut"))


# --- 4. a package must be a kic export --------------------------------------------------------------

def _copy_package(package: str, tmp_path) -> str:
    copy = str(tmp_path / "package")
    shutil.copytree(package, copy)
    return copy


def test_predict_refuses_a_cut_tarball_with_a_reason(package, tmp_path):
    tarball = os.path.join(package, artifacts.MODEL_TARBALL)
    cut = tmp_path / artifacts.MODEL_TARBALL
    with open(tarball, "rb") as handle:
        cut.write_bytes(handle.read()[: os.path.getsize(tarball) // 2])
    (tmp_path / "red.jpg").write_bytes(solid_jpeg())
    with pytest.raises(DataError, match="damaged or cut short"):
        predict.predict(str(cut), str(tmp_path / "red.jpg"), str(tmp_path / "out.jsonl"))


@pytest.mark.parametrize(("label_map", "match"), [
    ({"circle": 0, "square": 1}, "names 2 classes but the model returns 3 probabilities"),
    (["circle", "square", "triangle"], "must map each class name to its index"),
    ({"circle": 0, "square": 0, "triangle": 2}, "must map each class name to its index"),
    ({"circle": 0, "square": 2, "triangle": 1}, "model_info.json names the classes"),
])
def test_predict_refuses_a_label_map_that_is_not_the_models(package, tmp_path, label_map, match):
    copy = _copy_package(package, tmp_path)
    with open(os.path.join(copy, artifacts.LABEL_MAP), "w") as handle:
        json.dump(label_map, handle)
    (tmp_path / "red.jpg").write_bytes(solid_jpeg())
    with pytest.raises(predict.PredictInputError, match=match):
        predict.predict(copy, str(tmp_path / "red.jpg"), str(tmp_path / "out.jsonl"))


def test_predict_refuses_a_damaged_saved_model_before_loading_it(package, tmp_path):
    copy = _copy_package(package, tmp_path)
    pb = os.path.join(copy, artifacts.SAVED_MODEL_VERSION_DIR, "saved_model.pb")
    with open(pb, "r+b") as handle:
        handle.truncate(os.path.getsize(pb) // 3)
    (tmp_path / "red.jpg").write_bytes(solid_jpeg())
    with pytest.raises(predict.PredictInputError, match="saved_model.pb is damaged"):
        predict.predict(copy, str(tmp_path / "red.jpg"), str(tmp_path / "out.jsonl"))


def test_predict_refuses_damaged_variables_with_a_reason(package, tmp_path):
    copy = _copy_package(package, tmp_path)
    variables = os.path.join(copy, artifacts.SAVED_MODEL_VERSION_DIR, "variables")
    for name in os.listdir(variables):
        if name.startswith("variables.data"):
            with open(os.path.join(variables, name), "r+b") as handle:
                handle.truncate(100)
    (tmp_path / "red.jpg").write_bytes(solid_jpeg())
    with pytest.raises(predict.PredictInputError, match="the SavedModel cannot be loaded: .+"):
        predict.predict(copy, str(tmp_path / "red.jpg"), str(tmp_path / "out.jsonl"))
