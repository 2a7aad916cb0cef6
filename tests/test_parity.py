"""Training/serving parity measured on generated files of every kind serving
meets, with the session's tiny trained model (conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import tensorflow as tf
from image_fixtures import PARITY_KINDS, write_parity_files

from kic import artifacts
from kic.config import TrainingConfig
from kic.data import dataset_info, schema
from kic.data.prepare import PrepareOptions, prepare_dataset
from kic.demo_data import write_demo_dataset
from kic.errors import ParameterError
from kic.model import preprocessing
from kic.model.loading import load_trained_model
from kic.serving import export, parity
from kic.training import train


@pytest.fixture(scope="module")
def kinds_dataset(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """Demo shapes to train on; as the test split, photo-like pictures of the
    same classes in every kind of file (one per class and kind)."""
    root = tmp_path_factory.mktemp("parity")
    write_demo_dataset(str(root / "train"), images_per_class=8, size=40)
    kinds = write_parity_files(str(root / "test"))
    # 40: the short side the session's model was trained with (conftest.py), as in a pipeline run.
    prepare_dataset(PrepareOptions(source=str(root / "train"), test_source=str(root / "test"),
                                   output_dir=str(root / "prepared"), validation_fraction=0.25,
                                   image_short_side=40, workers=1))
    return str(root / "prepared"), kinds


def test_served_originals_agree_with_the_evaluated_records_for_every_kind(trained, kinds_dataset, tmp_path):
    prepared, kinds = kinds_dataset
    result = export.export_model(trained.model_dir, str(tmp_path / "package"),
                                 export.ExportOptions(examples=prepared))
    report = result.parity
    assert report.split == "test" and report.num_records == len(kinds) == len(report.files)
    assert not report.unservable and not report.skipped
    by_kind = report.by_kind()
    # What the header says, for every kind written (the size classes of plain JPEG read as one kind).
    expected = {kind.removesuffix(" (MM)").removesuffix(" small") for kind in PARITY_KINDS}
    assert set(by_kind) == expected
    assert by_kind["JPEG EXIF-rotated"]["files"] == 6 and by_kind["JPEG > 3000 px"]["files"] == 3
    # A faithful decoder: every kind's inputs within the bounds, nothing systematic.
    assert report.within_bounds and not report.clearly_exceeded and not report.systematic()
    assert 0 < report.pixel_mean_diff < parity.WARN_MEAN_LEVELS
    assert report.served_accuracy is not None and report.evaluated_accuracy is not None

    with open(os.path.join(result.package_dir, artifacts.SERVING_PARITY_REPORT)) as handle:
        written = json.load(handle)
    assert written["num_files"] == len(kinds) and written["by_kind"] == json.loads(json.dumps(by_kind))
    with open(os.path.join(result.package_dir, artifacts.MODEL_INFO)) as handle:
        assert json.load(handle)["serving_parity"]["top1_agreement"] == report.agreement
    assert f"differ by {report.pixel_mean_diff:.2f} pixel levels" in report.summary_lines()[0] and os.path.isfile(
        os.path.join(result.package_dir, artifacts.SUCCESS_MARKER))


@pytest.fixture
def small_dataset(tmp_path) -> tuple[str, str]:
    """The demo shapes, prepared: (source folder, prepared dataset)."""
    write_demo_dataset(str(tmp_path / "images"), images_per_class=8, size=40)
    prepare_dataset(PrepareOptions(source=str(tmp_path / "images"), output_dir=str(tmp_path / "prepared"),
                                   validation_fraction=0.25, test_fraction=0.25, image_short_side=40, workers=1))
    return str(tmp_path / "images"), str(tmp_path / "prepared")


def test_originals_gone_or_changed_are_not_compared(trained, exported, small_dataset):
    images, prepared = small_dataset
    model, info = load_trained_model(trained.model_dir)
    saved_model = os.path.join(exported.package_dir, artifacts.SAVED_MODEL_VERSION_DIR)
    data = dataset_info.load(prepared)
    test_names = [tf.io.parse_single_example(record, schema.feature_spec())[schema.SOURCE_URI].numpy().decode()
                  for record in tf.data.TFRecordDataset(data.shard_paths(prepared, "test"))]
    assert len(test_names) == 6  # 2 test images a class
    with open(os.path.join(images, test_names[0]), "ab") as handle:
        handle.write(b"\0")  # changed since prepare: no longer the file the record was made from
    os.remove(os.path.join(images, test_names[1]))
    report = parity.measure(saved_model, model, info, prepared)
    assert sorted(entry.source for entry in report.files) == sorted(test_names[2:])
    assert report.skipped == {"originals changed since prepare": 1, "originals not readable from here": 1}

    shutil.rmtree(images)  # e.g. a local folder of the machine prepare ran on
    report = parity.measure(saved_model, model, info, prepared)
    assert report.files == () and report.within_bounds is None and not report.clearly_exceeded
    assert report.summary_lines() == ["serving parity not measured on the test split: 6 originals not readable "
                                      "from here"]


def _report(*groups: tuple[str, int, float], flips: int = 0) -> parity.ParityReport:
    """Files of each (kind, count, mean input difference); ``flips`` of them answer another class."""
    files = [parity.FileParity(f"{kind}{i}", kind, diff, 10 * diff, 0, 0, 0.001, 0)
             for kind, count, diff in groups for i in range(count)]
    files = [dataclasses.replace(entry, served_top1=1, max_abs_diff=0.3) if i < flips else entry
             for i, entry in enumerate(files)]
    return parity.ParityReport("test", "/data", len(files), tuple(files), {}, ())


@pytest.mark.parametrize("report, within, fails", [
    (_report(("JPEG", 100, 0.65), ("PNG", 20, 1.4)), True, False),  # the measured faithful figures
    # Answers that flip on the same inputs (a weak model near its boundary) are no skew.
    (_report(("JPEG", 30, 0.65), flips=10), True, False),
    (_report(("JPEG", 100, 0.65), ("PNG", 20, 3.0)), False, False),  # outside the bounds: a warning
    (_report(("JPEG", 100, 0.65), ("WEBP", 5, 30.0)), False, True),  # a decoder wrong for a whole kind
    (_report(("JPEG", 2, 30.0)), False, False),  # too few files to call it systematic
    (_report(("JPEG", 100, 0.65), ("JPEG CMYK", 1, 40.0), ("PNG", 1, 40.0)), False, False),  # odd files
    # Spread over many small kinds, all files together still show it.
    (_report(*[(f"K{i}", 1, 20.0) for i in range(5)]), False, True),
    # The median file decides: one file far off does not make two faithful ones systematic.
    (_report(("PNG", 2, 1.0), ("PNG", 1, 60.0)), False, False),
])
def test_bounds_and_what_blocks_the_export(report, within, fails):
    assert report.within_bounds is within and report.clearly_exceeded is fails
    if fails:
        with pytest.raises(parity.ServingSkewError, match="systematically"):
            report.check()
        report.check("warn")
    else:
        report.check()


# Bugs in the serving decoder (preprocessing.decode_and_resize, which only serving and export's own
# verification call; evaluation decodes prepared records with decode_prepared_and_resize, prepare with
# Pillow): export's verification against the Keras model cannot see them, the parity gate must.
_faithful = preprocessing.decode_and_resize


def _swapped_channels(encoded, size, interpolation, short_side=0):
    return _faithful(encoded, size, interpolation, short_side)[..., ::-1]


def _letterboxed(encoded, size, interpolation, short_side=0):
    """Aspect ratio kept, padded with black: not how training resized."""
    image = preprocessing.downscale(preprocessing.decode_rgb(encoded, min_size=2 * short_side), short_side)
    return tf.round(tf.image.resize_with_pad(image, size, size, method=interpolation))


def _no_exif_orientation(encoded, size, interpolation, short_side=0):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return preprocessing.resize(preprocessing.downscale(image, short_side), size, interpolation)


@pytest.fixture(scope="module")
def few_kinds_dataset(tmp_path_factory) -> str:
    """As kinds_dataset with a test split of 9 files (a small JPEG, a PNG, an EXIF-rotated JPEG a class)."""
    root = tmp_path_factory.mktemp("few-kinds")
    write_demo_dataset(str(root / "train"), images_per_class=8, size=40)
    write_parity_files(str(root / "test"), kinds=("JPEG small", "PNG", "JPEG EXIF-rotated"))
    prepare_dataset(PrepareOptions(source=str(root / "train"), test_source=str(root / "test"),
                                   output_dir=str(root / "prepared"), validation_fraction=0.25,
                                   image_short_side=40, workers=1))
    return str(root / "prepared")


@pytest.mark.parametrize("bug, kind", [(_letterboxed, parity.ALL_FILES), (_no_exif_orientation, "JPEG EXIF-rotated")])
def test_a_broken_serving_decoder_blocks_the_export(trained, few_kinds_dataset, tmp_path, monkeypatch, bug, kind):
    monkeypatch.setattr(preprocessing, "decode_and_resize", bug)
    package = tmp_path / "package"
    with pytest.raises(parity.ServingSkewError, match="systematically") as raised:
        export.export_model(trained.model_dir, str(package), export.ExportOptions(examples=few_kinds_dataset))
    written = json.loads((package / artifacts.SERVING_PARITY_REPORT).read_text())
    assert written["systematic"][kind]["pixel_median_file_diff"] > parity.FAIL_MEAN_LEVELS
    assert kind in str(raised.value)
    assert not (package / artifacts.SUCCESS_MARKER).exists() and not (package / artifacts.MODEL_TARBALL).exists()


def test_swapped_channels_are_systematic_and_warn_exports_anyway(trained, few_kinds_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocessing, "decode_and_resize", _swapped_channels)
    result = export.export_model(trained.model_dir, str(tmp_path / "package"),
                                 export.ExportOptions(examples=few_kinds_dataset, serving_skew_action="warn"))
    assert result.parity.systematic()[parity.ALL_FILES]["pixel_median_file_diff"] > parity.FAIL_MEAN_LEVELS
    assert os.path.isfile(os.path.join(result.package_dir, artifacts.SUCCESS_MARKER))
    assert "SYSTEMATIC SKEW" in result.parity.summary_lines()[0]
    with pytest.raises(parity.ServingSkewError, match="channel order"):  # what the default, block, would do
        result.parity.check()
    with pytest.raises(ParameterError, match="serving_skew_action"):
        export.ExportOptions(serving_skew_action="ignore")


def test_a_weak_model_with_a_faithful_decoder_exports(tiny_backbone, few_kinds_dataset, tmp_path):
    """One epoch at a tiny learning rate: near-uniform probabilities, whose top-1 may flip on sub-level noise.
    The gate judges the inputs, which the model does not change."""
    import tiny_backbone as tiny

    prepared = few_kinds_dataset
    model_dir = str(tmp_path / "weak")
    train(prepared, model_dir, TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-6),
          tiny.train_options(tiny_backbone), log=lambda line: None)
    result = export.export_model(model_dir, str(tmp_path / "package"), export.ExportOptions(examples=prepared))
    report = result.parity
    assert not report.clearly_exceeded and report.within_bounds and len(report.files) == 9
    assert report.evaluated_accuracy < 0.7  # weak indeed
    assert os.path.isfile(os.path.join(result.package_dir, artifacts.SUCCESS_MARKER))


