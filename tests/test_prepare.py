import collections
import io
import json
import os
import random

import numpy as np
import pytest
from image_fixtures import fixture_matrix, noise_jpeg
from PIL import Image
from report_views import read_markdown, shown_text

from kic import artifacts, parameters, storage
from kic.data import dataset_info, schema
from kic.data.prepare import DataQualityError, PrepareOptions, SourceError, prepare_dataset
from kic.errors import ParameterError

SMALL = {"image_short_side": 24, "workers": 1}


def _photo(seed: int) -> bytes:
    return noise_jpeg(size=(40, 30), seed=seed)


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (200, 40, 40, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(root, counts: dict[str, int], seed: int = 0) -> str:
    """``counts[class]`` distinct noise JPEGs per class folder."""
    for class_index, (name, count) in enumerate(counts.items()):
        for index in range(count):
            _write(os.path.join(root, name, f"img{index:03d}.jpg"), _photo(seed + 1000 * class_index + index))
    return str(root)


def _run(source, output, **overrides) -> dataset_info.DatasetInfo:
    options = {**SMALL, **overrides}
    result = prepare_dataset(PrepareOptions(source=str(source), output_dir=str(output), **options))
    assert result.info == dataset_info.load(str(output))
    return result


def _records(output, split: str) -> list[bytes]:
    import tensorflow as tf

    info = dataset_info.load(str(output))
    paths = info.shard_paths(str(output), split)
    return [record.numpy() for record in tf.data.TFRecordDataset(paths)] if paths else []


def _parsed(output, split: str) -> list[dict]:
    import tensorflow as tf

    rows = []
    for record in _records(output, split):
        feature = tf.train.Example.FromString(record).features.feature
        rows.append({
            "label": feature[schema.LABEL].int64_list.value[0],
            "source": feature[schema.SOURCE_URI].bytes_list.value[0].decode(),
            "sha256": feature[schema.CONTENT_SHA256].bytes_list.value[0].decode(),
            "width": feature[schema.IMAGE_WIDTH].int64_list.value[0],
            "height": feature[schema.IMAGE_HEIGHT].int64_list.value[0],
            "encoded": feature[schema.IMAGE_ENCODED].bytes_list.value[0],
        })
    return rows


def _shard_bytes(output) -> dict[str, bytes]:
    info = dataset_info.load(str(output))
    return {name: storage.read_bytes(os.path.join(str(output), name))
            for split in info.splits.values() for name in split.shards}


# --------------------------------------------------------------------------- folder source, bad files


def test_non_image_files_beside_the_images_are_ignored_not_rejected(tmp_path):
    """Issue 21: a Thumbs.db and a notes.txt in every class folder failed the dataset on max_rejected_fraction."""
    root = _folder(tmp_path / "src", {"cats": 10, "dogs": 10})
    extras = []
    for name in ("cats", "dogs"):
        for extra in ("Thumbs.db", "notes.txt", "desktop.ini", "._img000.jpg"):
            _write(os.path.join(root, name, extra), b"\0\1 not an image")
            extras.append(f"{name}/{extra}")
    _write(os.path.join(root, "__MACOSX", "cats", "._img001.jpg"), b"\0\5\x16\7")
    extras.append("__MACOSX/cats/._img001.jpg")
    _write(os.path.join(root, "dogs", "fake.jpg"), b"a text file that claims to be a JPEG")

    result = _run(root, tmp_path / "out")  # the default max_rejected_fraction (0.05): 1 of 21 rejected

    report = result.report
    assert sorted(report["ignored"]) == sorted(extras)
    assert [(entry["file"][len(root) + 1:], entry["reason"]) for entry in report["rejected"]["files"]] == [
        ("dogs/fake.jpg", "not_an_image")]
    assert report["metrics"]["rejected_fraction"] == pytest.approx(1 / 21, abs=1e-6)
    assert result.info.class_names == ("cats", "dogs")
    for name in (artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        text = shown_text(tmp_path / "out" / name)
        assert "Ignored files" in text and "cats/Thumbs.db" in text and "__MACOSX/cats/._img001.jpg" in text


def test_folder_with_bad_files_reports_every_reason(tmp_path):
    root = _folder(tmp_path / "src", {"cats": 10, "dogs": 10})
    matrix = fixture_matrix()
    for name, (raw, _) in matrix.items():
        _write(os.path.join(root, "cats", "mixed", name), raw)
    _write(os.path.join(root, "notes.txt"), b"not in a class")

    result = _run(root, tmp_path / "out", max_rejected_fraction=1.0)
    report = result.report

    expected = {f"cats/mixed/{name}": reason for name, (_, reason) in matrix.items() if reason}
    rejected = {entry["file"][len(root) + 1:]: entry["reason"] for entry in report["rejected"]["files"]}
    assert rejected == expected
    assert report["rejected"]["by_reason"] == dict(collections.Counter(expected.values()))
    assert all(entry["detail"] for entry in report["rejected"]["files"])
    assert report["ignored"] == ["notes.txt"]
    kept_good = sum(1 for _, reason in matrix.values() if reason is None)
    metrics = report["metrics"]
    assert metrics["num_train"] + metrics["num_validation"] + metrics["num_test"] == 20 + kept_good
    assert metrics["num_rejected"] == len(expected)
    assert metrics["num_duplicates"] == 0
    assert metrics["rejected_fraction"] == pytest.approx(len(expected) / (20 + len(matrix)), abs=1e-6)
    assert result.info.class_names == ("cats", "dogs")

    records = [row for split in ("train", "validation", "test") for row in _parsed(tmp_path / "out", split)]
    assert len(records) == 20 + kept_good
    assert all(row["encoded"][:2] == b"\xff\xd8" for row in records)
    assert all(min(row["width"], row["height"]) <= 24 for row in records)
    by_source = {row["source"]: row["label"] for row in records}
    assert by_source["dogs/img003.jpg"] == 1 and by_source["cats/mixed/photo.bmp"] == 0

    out = tmp_path / "out"
    assert json.loads((out / artifacts.LABEL_MAP).read_text()) == {"cats": 0, "dogs": 1}
    assert (out / artifacts.LABELS_TXT).read_text() == "cats\ndogs\n"
    saved = json.loads((out / artifacts.DATA_REPORT_JSON).read_text())
    assert saved["metrics"] == metrics and saved["status"] == "ok"
    markdown = shown_text(out / artifacts.DATA_REPORT_MARKDOWN)
    html = shown_text(out / artifacts.DATA_REPORT_HTML)
    for reason in set(expected.values()):
        assert reason in markdown and reason in html
    assert "truncated.jpg" in markdown
    stats = report["image_stats"]
    width = stats["original_width"]
    assert width["max"] >= width["median"] >= width["min"] > 0
    assert {"JPEG", "PNG", "BMP"} <= set(stats["formats"])
    timing = report["timing"]
    assert timing["normalize_s"] > 0 and timing["write_s"] > 0  # both phases had images to work on
    assert timing["list_s"] + timing["normalize_s"] + timing["write_s"] <= timing["total_s"] + 0.01


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_across_workers_and_reruns(tmp_path):
    root = _folder(tmp_path / "src", {"a": 14, "b": 9, "c": 7})
    first = _run(root, tmp_path / "one", workers=1)
    second = _run(root, tmp_path / "two", workers=2)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    assert first.info == second.info
    lines = []
    prepare_dataset(PrepareOptions(source=root, output_dir=str(tmp_path / "one"), **SMALL),
                    progress=lines.append)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    assert any(line.startswith("prepare: 30/30 images (") and line.endswith(", 0 rejected") for line in lines)

    other = _run(root, tmp_path / "three", seed=43)
    membership = {split: {row["sha256"] for row in _parsed(tmp_path / "one", split)}
                  for split in first.info.splits}
    other_membership = {split: {row["sha256"] for row in _parsed(tmp_path / "three", split)}
                        for split in other.info.splits}
    assert membership != other_membership
    assert other.info.fingerprint != first.info.fingerprint


def test_listing_order_does_not_matter(tmp_path):
    """A manifest listing the same files (same relative names) in a shuffled
    order gives byte-identical shards to the folder source."""
    root = _folder(tmp_path / "src", {"x": 8, "y": 12})
    rows = [f"{name}/{file}" for name in ("x", "y") for file in sorted(os.listdir(os.path.join(root, name)))]
    random.Random(5).shuffle(rows)
    manifest = os.path.join(root, "list.csv")
    with open(manifest, "w") as handle:
        handle.write("path,label\n" + "".join(f"{row},{row.split('/')[0]}\n" for row in rows))
    _run(root, tmp_path / "folder")
    _run(manifest, tmp_path / "manifest")
    assert _shard_bytes(tmp_path / "folder") == _shard_bytes(tmp_path / "manifest")


# --------------------------------------------------------------------------- splits


def test_splits_are_disjoint_stratified_and_class_mixed(tmp_path):
    counts = {"a": 40, "b": 21, "c": 10}
    root = _folder(tmp_path / "src", counts)
    result = _run(root, tmp_path / "out", validation_fraction=0.2, test_fraction=0.1, images_per_shard=8)
    rows = {split: _parsed(tmp_path / "out", split) for split in ("train", "validation", "test")}
    digests = {split: [row["sha256"] for row in split_rows] for split, split_rows in rows.items()}
    assert sum(len(values) for values in digests.values()) == len(set().union(*digests.values())) == 71
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    for label, (name, count) in enumerate(counts.items()):
        for split, share in fractions.items():
            got = sum(row["label"] == label for row in rows[split])
            assert abs(got - count * share) <= 1, (name, split, got)
            assert result.report["counts"]["per_class"][name][split] == got
    assert len(result.info.splits["train"].shards) == 7  # ceil(49 / 8)
    assert len(result.info.splits["test"].shards) == 4  # the minimum, for parallel reads
    train_labels = [row["label"] for row in rows["train"]]
    assert train_labels != sorted(train_labels)  # shuffled, not grouped by class


def test_zero_test_fraction_means_no_test_split(tmp_path):
    root = _folder(tmp_path / "src", {"a": 5, "b": 5})
    result = _run(root, tmp_path / "out", validation_fraction=0.2, test_fraction=0.0)
    assert set(result.info.splits) == {"train", "validation"}
    assert result.report["metrics"]["num_test"] == 0


def test_too_small_class_names_the_class(tmp_path):
    root = _folder(tmp_path / "src", {"plenty": 20, "scarce": 2})
    with pytest.raises(SourceError, match=r"'scarce' has 2") as error:
        _run(root, tmp_path / "out")
    assert "plenty" not in str(error.value)
    assert not os.path.exists(tmp_path / "out" / artifacts.DATASET_INFO)


def test_explicit_validation_and_test_sources(tmp_path):
    train = _folder(tmp_path / "train", {"a": 6, "b": 6}, seed=0)
    validation = _folder(tmp_path / "val", {"a": 2, "b": 2}, seed=50)
    test = _folder(tmp_path / "test", {"a": 2}, seed=80)
    _write(os.path.join(validation, "a", "leak.jpg"), _photo(3))  # same bytes as train a/img003.jpg
    result = _run(train, tmp_path / "out", validation_source=validation, test_source=test)
    assert result.report["metrics"]["num_train"] == 11
    assert result.report["metrics"]["num_validation"] == 5
    assert result.report["metrics"]["num_test"] == 2
    train_sources = {row["source"] for row in _parsed(tmp_path / "out", "train")}
    assert "a/img003.jpg" not in train_sources
    [group] = result.report["duplicates"]["groups"]
    assert group["kept"]["channel"] == "validation"
    assert group["dropped"][0]["file"].endswith(os.path.join("a", "img003.jpg"))
    warnings = result.report["warnings"]
    assert any("test split has no images of class(es) 'b'" in warning for warning in warnings)

    _folder(tmp_path / "val", {"unknown": 1}, seed=90)
    with pytest.raises(SourceError, match="'unknown'"):
        _run(train, tmp_path / "out2", validation_source=validation)


# --------------------------------------------------------------------------- duplicates


def test_duplicates_kept_once_conflicts_dropped_never_in_two_splits(tmp_path):
    root = _folder(tmp_path / "src", {"a": 12, "b": 12})
    _write(os.path.join(root, "a", "zz_copy.jpg"), _photo(1))  # same class: duplicate of a/img001.jpg
    _write(os.path.join(root, "a", "nested", "copy2.jpg"), _photo(1))
    _write(os.path.join(root, "b", "conflict.jpg"), _photo(2))  # a/img002.jpg, but labelled b
    result = _run(root, tmp_path / "out")
    groups = {group["sha256"]: group for group in result.report["duplicates"]["groups"]}
    assert len(groups) == 2
    same = next(group for group in groups.values() if not group["conflicting"])
    assert same["kept"]["file"].endswith("img001.jpg")
    dropped = sorted(os.path.basename(entry["file"]) for entry in same["dropped"])
    assert dropped == ["copy2.jpg", "zz_copy.jpg"]
    conflict = next(group for group in groups.values() if group["conflicting"])
    assert conflict["kept"] is None and {entry["label"] for entry in conflict["dropped"]} == {"a", "b"}
    assert result.report["metrics"]["num_duplicates"] == 4
    rows = [row for split in result.info.splits for row in _parsed(tmp_path / "out", split)]
    digests = [row["sha256"] for row in rows]
    assert len(digests) == len(set(digests)) == 24 - 1
    assert conflict["sha256"] not in digests
    assert "conflicting labels" in result.markdown


# --------------------------------------------------------------------------- class names


def test_glob_and_non_ascii_class_names(tmp_path):
    root = _folder(tmp_path / "src", {"cls[1]": 5, "café": 5, "日本": 5, "a*?": 5})
    result = _run(root, tmp_path / "out")
    assert result.info.class_names == ("a*?", "café", "cls[1]", "日本")
    out = tmp_path / "out"
    expected = {"a*?": 0, "café": 1, "cls[1]": 2, "日本": 3}
    assert json.loads((out / artifacts.LABEL_MAP).read_text("utf-8")) == expected
    assert (out / artifacts.LABELS_TXT).read_text("utf-8").splitlines() == list(result.info.class_names)
    rows = _parsed(out, "train")
    assert {row["source"].split("/")[0]: row["label"] for row in rows} == expected
    assert "日本" in result.html and "cls[1]" in read_markdown(result.markdown).text


def test_bad_class_names_refused_before_any_work(tmp_path):
    root = _folder(tmp_path / "src", {"good": 5, "Good": 5, "tab\tname": 5})
    with pytest.raises(SourceError) as error:
        _run(root, tmp_path / "out")
    assert "'Good'" in str(error.value) or "'good'" in str(error.value)
    assert "'tab\\tname'" in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_html_report_escapes_names_and_is_self_contained(tmp_path):
    manifest = tmp_path / "m.jsonl"
    evil = "<img src=x onerror=alert(1)>"
    for index in range(6):
        _write(str(tmp_path / f"{index}.jpg"), _photo(index))
    lines = [json.dumps({"uri": f"{index}.jpg", "label": evil if index % 2 else "ok"}) for index in range(6)]
    lines.append(json.dumps({"uri": "missing.jpg", "label": "ok"}))
    manifest.write_text("\n".join(lines))
    result = _run(manifest, tmp_path / "out", test_fraction=0, max_rejected_fraction=0.5)
    assert evil not in result.html and "&lt;img src=x onerror=alert(1)&gt;" in result.html
    assert "http://" not in result.html and "https://" not in result.html and "<link" not in result.html
    assert result.report["rejected"]["by_reason"] == {"unreadable": 1}


def test_html_report_shows_images_per_class_and_rejected_files_that_still_decode(tmp_path):
    import base64
    import re

    root = _folder(tmp_path / "src", {"cats": 8, "dogs": 3})
    evil = '<b>&"evil.jpg'
    _write(os.path.join(root, "cats", evil), _photo(99))
    _write(os.path.join(root, "dogs", "big.png"), _png((60, 60)))  # decodes, but over max_image_pixels
    _write(os.path.join(root, "dogs", "page.jpg"), b"<html>not an image</html>")  # nothing to show
    result = _run(root, tmp_path / "out", max_image_pixels=2000, max_rejected_fraction=0.5)
    assert result.report["rejected"]["by_reason"] == {"not_an_image": 1, "too_many_pixels": 1}
    html = result.html

    sources = re.findall(r'<img src="([^"]*)"', html)
    assert sources and all(source.startswith("data:image/jpeg;base64,") for source in sources)
    for source in sources:
        thumbnail = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 96
    per_class = html[html.index("A few images per class"):html.index("Rejected files by reason")]
    cats, dogs = per_class.split("<h3>dogs</h3>")
    assert cats.count("<img ") == 6 and dogs.count("<img ") == 3  # at most six of a class; dogs has three kept
    assert 'alt="cats/&lt;b&gt;&amp;&quot;evil.jpg"' in cats and evil not in html
    rejected = html[html.index("Rejected files that still decode"):]
    assert rejected.count("<img ") == 1 and 'alt="dogs/big.png"' in rejected and "too_many_pixels" in rejected
    assert "page.jpg" not in rejected
    assert "data:" not in result.markdown


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_sources(tmp_path, kind):
    images = tmp_path / "pool"
    for index in range(12):
        _write(str(images / f"{index}.jpg"), _photo(index))
    labels = {f"{index}.jpg": ("even" if index % 2 == 0 else "odd") for index in range(12)}
    manifest = tmp_path / "lists" / f"m.{kind}"
    os.makedirs(manifest.parent)
    if kind == "csv":
        rows = "".join(f"../pool/{name},{label}\n" for name, label in labels.items())
        manifest.write_text("uri,label\n" + rows)
    else:
        manifest.write_text("".join(json.dumps({"uri": str(images / name), "label": label}) + "\n"
                                    for name, label in labels.items()))
    result = _run(manifest, tmp_path / "out")
    assert result.info.class_names == ("even", "odd")
    rows = [row for split in result.info.splits for row in _parsed(tmp_path / "out", split)]
    assert len(rows) == 12
    for row in rows:
        name = os.path.basename(row["source"])
        assert row["label"] == (0 if labels[name] == "even" else 1)


# --------------------------------------------------------------------------- failures and commit-last


def test_rejected_fraction_over_threshold_fails_after_writing_the_report(tmp_path):
    root = _folder(tmp_path / "src", {"a": 10, "b": 10})
    for index in range(2):
        _write(os.path.join(root, "a", f"broken{index}.jpg"), b"<html>nope</html>")
    out = tmp_path / "out"
    _run(root, out, max_rejected_fraction=0.5)
    with pytest.raises(DataQualityError, match=r"2 of 22 files \(9\.1%\).*not_an_image: 2"):
        _run(root, out, max_rejected_fraction=0.05)
    assert not (out / artifacts.DATASET_INFO).exists()  # the earlier, finished run is invalidated
    for name in (artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN, artifacts.DATA_REPORT_HTML):
        assert (out / name).exists()
    report = json.loads((out / artifacts.DATA_REPORT_JSON).read_text())
    assert report["status"] == "failed" and "max_rejected_fraction" in report["error"]
    assert report["metrics"]["num_rejected"] == 2
    with pytest.raises(dataset_info.IncompleteDatasetError):
        dataset_info.load(str(out))


def test_class_left_without_training_images_is_a_quality_error(tmp_path):
    root = _folder(tmp_path / "src", {"a": 10})
    for index in range(3):
        _write(os.path.join(root, "b", f"{index}.jpg"), b"")
    with pytest.raises(DataQualityError, match="'b'"):
        _run(root, tmp_path / "out", max_rejected_fraction=1.0)
    assert (tmp_path / "out" / artifacts.DATA_REPORT_JSON).exists()


def test_dataset_info_is_written_last_and_a_failed_rerun_leaves_no_finished_marker(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src", {"a": 12, "b": 12})
    out = tmp_path / "out"
    _run(root, out, images_per_shard=2)
    info_time = (out / artifacts.DATASET_INFO).stat().st_mtime_ns
    for name in os.listdir(out):
        assert (out / name).stat().st_mtime_ns <= info_time, name

    calls = []
    real_make_example = schema.make_example

    def failing_make_example(**kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise OSError("disk full (simulated)")
        return real_make_example(**kwargs)

    monkeypatch.setattr(schema, "make_example", failing_make_example)
    with pytest.raises(OSError, match="simulated"):
        _run(root, out, images_per_shard=3)
    assert not (out / artifacts.DATASET_INFO).exists()
    assert not [name for name in os.listdir(out) if ".tmp" in name]
    with pytest.raises(dataset_info.IncompleteDatasetError):
        dataset_info.load(str(out))

    monkeypatch.setattr(schema, "make_example", real_make_example)
    result = _run(root, out, images_per_shard=5)
    shards = sorted(name for name in os.listdir(out) if name.endswith(".tfrecord"))
    assert shards == sorted(name for split in result.info.splits.values() for name in split.shards)


def test_options_validation_lists_every_problem(tmp_path):
    options = PrepareOptions(source="", output_dir=str(tmp_path), validation_fraction=0.7, test_fraction=0.4,
                             images_per_shard=0, max_rejected_fraction=2, workers=-1)
    with pytest.raises(ParameterError) as error:
        options.validate()
    assert {problem.name for problem in error.value.problems} == {
        "source", "validation_fraction+test_fraction", "images_per_shard", "max_rejected_fraction", "workers"}
    assert "must leave training images: below 1" in str(error.value)
    with pytest.raises(ParameterError, match="inside source"):
        PrepareOptions(source=str(tmp_path), output_dir=str(tmp_path / "prepared")).validate()
    # With an explicit validation source, validation_fraction is unused, so only test_fraction counts.
    PrepareOptions(source=str(tmp_path / "s"), output_dir=str(tmp_path / "out"),
                   validation_source=str(tmp_path / "v"), validation_fraction=0.9,
                   test_fraction=0.5).validate()


# --------------------------------------------------------------------------- GCS


def _upload(local_root: str, uri: str) -> None:
    storage.upload_dir(local_root, uri)


def _gcs_shard_bytes(uri: str) -> dict[str, bytes]:
    info = dataset_info.load(uri)
    return {name: storage.read_bytes(storage.join(uri, name))
            for split in info.splits.values() for name in split.shards}


def test_gcs_source_gives_the_same_dataset_as_local(tmp_path, gcs_emulator):
    root = _folder(tmp_path / "src", {"cls[1]": 6, "café": 6})
    bucket = gcs_emulator.new_bucket()
    _upload(root, f"{bucket}/images")
    local = _run(root, tmp_path / "local")
    remote = _run(f"{bucket}/images/", tmp_path / "remote")
    assert _shard_bytes(tmp_path / "local") == _shard_bytes(tmp_path / "remote")
    assert local.info.fingerprint == remote.info.fingerprint


@pytest.mark.parametrize("store", ["gcs_emulator", "s3_server"])
def test_an_object_over_the_byte_limit_is_rejected_as_too_large_without_being_downloaded(tmp_path, store,
                                                                                           request):
    """As a local file is judged by its size before it is read: a video someone left in a class folder
    on a bucket is a too_large row in the report, not gigabytes in prepare's memory."""
    root = _folder(tmp_path / "src", {"a": 6, "b": 6})
    _write(os.path.join(root, "a", "clip.jpg"), os.urandom(300_000))
    bucket = request.getfixturevalue(store).new_bucket()
    _upload(root, f"{bucket}/images")
    result = _run(f"{bucket}/images/", tmp_path / "out", max_image_bytes=200_000, max_rejected_fraction=0.2)
    [rejected] = result.report["rejected"]["files"]
    assert rejected["file"].endswith("a/clip.jpg") and rejected["reason"] == "too_large"
    told = "holds more than" if store == "gcs_emulator" else "is 300,000 bytes, over"  # S3 gives the size first
    assert rejected["detail"] == f"the file {told} the limit of 200,000 bytes"
    assert result.info.splits["train"].num_examples + result.info.splits["validation"].num_examples \
        + result.info.splits["test"].num_examples == 12


def test_flaky_gcs_source_and_output_give_the_same_dataset(tmp_path, flaky_gcs, gcs_emulator):
    root = _folder(tmp_path / "src", {"a": 5, "b": 5})
    _write(os.path.join(root, "a", "bad.jpg"), b"")
    bucket = gcs_emulator.new_bucket()
    flaky_gcs.fail_every = 0
    _upload(root, f"{bucket}/images")
    local = _run(root, tmp_path / "local", max_rejected_fraction=0.5)
    flaky_gcs.fail_every = 4
    remote = _run(f"{bucket}/images", f"{bucket}/prepared", max_rejected_fraction=0.5)
    assert flaky_gcs.injected_failures > 0
    flaky_gcs.fail_every = 0
    assert _gcs_shard_bytes(f"{bucket}/prepared") == _shard_bytes(tmp_path / "local")
    assert remote.report["metrics"] == local.report["metrics"]
    assert storage.exists(f"{bucket}/prepared/{artifacts.DATA_REPORT_HTML}")


# --------------------------------------------------------------------------- TFDS


def _tiny_tfds_builder(data_dir: str):
    import numpy as np
    import tensorflow_datasets as tfds

    class KicTinyShapes(tfds.core.GeneratorBasedBuilder):
        """Registered as 'kic_tiny_shapes'; labels deliberately not in alphabetical order."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["zebra", "apple"]),
                }),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 16), "test": self._generate_examples(100, 4)}

        def _generate_examples(self, start, count):
            for index in range(start, start + count):
                # Apples (label 1) are bright, zebras (label 0) dark: the label survives in the pixels.
                label = index % 2
                noise = np.random.default_rng(index).integers(0, 100, size=(20, 30, 3), dtype=np.uint8)
                yield index, {"image": noise + np.uint8(150 * label), "label": label}

    builder = KicTinyShapes(data_dir=data_dir)
    builder.download_and_prepare()
    return builder


def test_tfds_source_by_name_from_a_prepared_data_dir(tmp_path):
    data_dir = str(tmp_path / "tfds")
    _tiny_tfds_builder(data_dir)
    result = _run("tfds:kic_tiny_shapes", tmp_path / "out", tfds_data_dir=data_dir, validation_fraction=0.25)
    assert result.info.class_names == ("apple", "zebra")
    metrics = result.report["metrics"]
    # TFDS's own test split is kept; validation is split from its train split.
    assert (metrics["num_train"], metrics["num_validation"], metrics["num_test"]) == (12, 4, 4)
    test_rows = _parsed(tmp_path / "out", "test")
    assert all(row["source"].startswith("tfds:kic_tiny_shapes/test/") for row in test_rows)
    assert len({row["source"] for row in test_rows}) == 4
    for split in result.info.splits:
        for row in _parsed(tmp_path / "out", split):  # TFDS's zebra=0, apple=1 become apple=0, zebra=1
            brightness = np.asarray(Image.open(io.BytesIO(row["encoded"]))).mean()
            assert row["label"] == (0 if brightness > 150 else 1)
    assert result.report["image_stats"]["formats"] == {"PNG": 20}

    with pytest.raises(SourceError, match="not prepared.*never downloads"):
        _run("tfds:kic_tiny_shapes", tmp_path / "out2", tfds_data_dir=str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="no dataset named"):
        _run("tfds:kic_no_such_dataset_xyz", tmp_path / "out3")

    # The front door (validate, kic validate --check-uris) says the same before any step runs.
    assert parameters.validate({"data_source": "tfds:kic_tiny_shapes", "tfds_data_dir": data_dir})
    (tmp_path / "empty").mkdir()
    for values, expected in (({"data_source": "tfds:kic_tiny_shapes", "tfds_data_dir": str(tmp_path / "empty")},
                              "not prepared in .*empty.*never downloads"),
                             ({"test_source": "tfds:kic_no_such_dataset_xyz"}, "no dataset named")):
        with pytest.raises(ParameterError, match=expected):
            parameters.validate(values)
    assert not os.listdir(tmp_path / "empty")  # nothing downloaded, nothing created
    # Where it cannot be looked up from here (kic submit: the cluster's TFDS folder), only the form is checked.
    parameters.validate({"data_source": "tfds:kic_no_such_dataset_xyz"}, reachability=lambda uri: False)


def test_tfds_mock_data_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        result = _run("tfds:beans", tmp_path / "out", validation_fraction=0.25, test_fraction=0.0)
    assert result.info.class_names == ("angular_leaf_spot", "bean_rust", "healthy")
    assert result.report["metrics"]["num_train"] + result.report["metrics"]["num_validation"] == 24


def test_one_class_is_refused_before_any_image_is_read(tmp_path):
    root = _folder(tmp_path / "src", {"only": 5})
    with pytest.raises(SourceError, match=r"has only class 'only': a classifier needs at least 2 classes"):
        _run(root, tmp_path / "out")


# --------------------------------------------------------------------------- S3


def test_s3_folder_and_manifest_give_the_same_dataset_as_local(tmp_path, s3_server):
    root = _folder(tmp_path / "src", {"cls[1]": 6, "café": 6})
    bucket = s3_server.new_bucket()
    _upload(root, f"{bucket}/images")
    local = _run(root, tmp_path / "local")
    remote = _run(f"{bucket}/images/", f"{bucket}/prepared")
    assert _gcs_shard_bytes(f"{bucket}/prepared") == _shard_bytes(tmp_path / "local")
    assert local.info.fingerprint == remote.info.fingerprint
    assert storage.exists(f"{bucket}/prepared/{artifacts.DATA_REPORT_HTML}")
    # A manifest on S3, its entries relative to it, names the same files: the same images and labels.
    lines = [f"images/{name}/img{index:03d}.jpg,{name}" for name in ("cls[1]", "café") for index in range(6)]
    storage.write_text(f"{bucket}/list.csv", "uri,label\n" + "\n".join(lines) + "\n")
    _run(f"{bucket}/list.csv", tmp_path / "from-manifest")

    def images(output) -> list[tuple[int, str]]:
        return sorted((row["label"], row["sha256"]) for split in ("train", "validation", "test")
                      for row in _parsed(output, split))

    assert images(tmp_path / "from-manifest") == images(tmp_path / "local") and len(images(tmp_path / "local")) == 12
