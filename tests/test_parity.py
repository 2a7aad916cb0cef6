"""Training/serving parity measured on generated files of every kind serving
meets, with the session's tiny trained model (conftest.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tensorflow as tf
from image_fixtures import PARITY_KINDS, write_parity_files

from kic import artifacts
from kic.data import dataset_info, schema
from kic.data.prepare import PrepareOptions, prepare_dataset
from kic.demo_data import write_demo_dataset
from kic.model.loading import load_trained_model
from kic.serving import export, parity


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
    assert report.max_abs_diff <= parity.MAX_DIFF_BOUND and not report.clearly_exceeded
    # The tiny model is unsure of some of these pictures: top-1 may flip between two classes it scores
    # within a hair of each other. A flip whose probabilities moved by less than 0.01 was such a tie.
    flips = [file for file in report.files if file.served_top1 != file.evaluated_top1]
    assert len(flips) <= 1 and all(file.max_abs_diff < 0.01 for file in flips), flips

    with open(os.path.join(result.package_dir, artifacts.SERVING_PARITY_REPORT)) as handle:
        written = json.load(handle)
    assert written["num_files"] == len(kinds) and written["by_kind"] == json.loads(json.dumps(by_kind))
    with open(os.path.join(result.package_dir, artifacts.MODEL_INFO)) as handle:
        assert json.load(handle)["serving_parity"]["top1_agreement"] == report.agreement
    assert f"top-1 agreement {report.agreement:.1%}" in report.summary_lines()[0] and os.path.isfile(
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


def _report(agreeing: int, disagreeing: int, diff: float = 0.001, far_off: int = 0) -> parity.ParityReport:
    files = ([parity.FileParity(f"a{i}", "JPEG", 0, 0, diff) for i in range(agreeing)]
             + [parity.FileParity(f"b{i}", "PNG", 0, 1, diff) for i in range(disagreeing)]
             + [parity.FileParity(f"c{i}", "WEBP", 1, 1, 0.5) for i in range(far_off)])
    return parity.ParityReport("test", "/data", len(files), tuple(files), {}, ())


@pytest.mark.parametrize("report, within, fails", [
    (_report(100, 0), True, False),
    (_report(99, 1), True, False),  # 99 % is the bound itself
    (_report(98, 2), False, False),  # outside the bounds: a warning, not a failure
    (_report(100, 0, diff=0.03), False, False),
    (_report(94, 6), False, True),  # under 95 % agreement: systematic
    (_report(94, 0, far_off=6), False, True),  # more than 5 % of files off by more than 0.1
    (_report(95, 0, far_off=5), False, False),
    (_report(10, 9), False, False),  # too few files to call it systematic
])
def test_bounds_and_what_fails_the_export(report, within, fails):
    assert report.within_bounds is within and report.clearly_exceeded is fails
    if fails:
        with pytest.raises(parity.ServingSkewError, match="differently on the original files"):
            report.check()
    else:
        report.check()


def test_a_systematic_skew_fails_the_export_after_writing_the_report(trained, small_dataset, tmp_path, monkeypatch):
    _, prepared = small_dataset
    monkeypatch.setattr(parity, "measure", lambda *args, **kwargs: _report(50, 50))
    package = tmp_path / "package"
    with pytest.raises(parity.ServingSkewError, match="top-1 agreement 50.0%"):
        export.export_model(trained.model_dir, str(package), export.ExportOptions(examples=prepared))
    assert json.loads((package / artifacts.SERVING_PARITY_REPORT).read_text())["clearly_exceeded"] is True
    assert not (package / artifacts.SUCCESS_MARKER).exists() and not (package / artifacts.MODEL_TARBALL).exists()
