"""Fingerprints of what the sources are now: they change when the data does, and only then."""

import os
import time

import pytest

from kic import storage
from kic.data.snapshot import fingerprint
from kic.errors import SourceError
from kic.runtime import steps


def _write(path, data: bytes = b"image") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _rewrite(path, data: bytes) -> None:
    """``path`` rewritten in place, a second later than it was: what a copy over it does (a clock tick apart)."""
    before = os.stat(path).st_mtime_ns
    _write(path, data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def _snapshot(data_source, **sources) -> dict[str, str]:
    """The snapshot step's outputs, by name, as train, evaluate and plan_trials get them."""
    arguments = {"validation_source": "", "test_source": "", "tfds_data_dir": "", "base_model_uri": "",
                 "baseline_model_uri": "", **sources}
    return dict(zip(("data", "base_model", "baseline_model", "pretrained_weights", "search_space",
                     "baseline_model_uri"),
                    steps.snapshot_step(data_source=str(data_source), **arguments), strict=True))


def test_a_folder_changes_its_fingerprint_when_an_image_is_added_replaced_or_removed(tmp_path):
    root = tmp_path / "images"
    _write(root / "cat" / "1.jpg")
    _write(root / "dog" / "2.jpg")
    first = fingerprint(str(root))
    assert fingerprint(str(root)) == first  # nothing changed: the same, so cached steps are reused
    _write(root / "dog" / "3.jpg")
    added = fingerprint(str(root))
    assert added != first
    time.sleep(0.01)
    _write(root / "dog" / "3.jpg", b"another image, same name")
    replaced = fingerprint(str(root))
    assert replaced not in (first, added)
    os.remove(root / "dog" / "3.jpg")
    assert fingerprint(str(root)) not in (added, replaced)


def test_several_sources_and_empty_ones(tmp_path):
    _write(tmp_path / "train" / "a" / "1.jpg")
    _write(tmp_path / "validation" / "a" / "2.jpg")
    both = fingerprint(str(tmp_path / "train"), str(tmp_path / "validation"), "")
    assert both != fingerprint(str(tmp_path / "train"), "", "")
    assert both == fingerprint(str(tmp_path / "train"), str(tmp_path / "validation"), "")


def test_a_manifest_is_fingerprinted_by_its_content(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("uri,label\na.jpg,cat\n")
    first = fingerprint(str(manifest))
    os.utime(manifest, (1, 1))  # touching it changes nothing
    assert fingerprint(str(manifest)) == first
    manifest.write_text("uri,label\na.jpg,cat\nb.jpg,dog\n")
    assert fingerprint(str(manifest)) != first


def test_gcs_objects_are_fingerprinted_by_name_size_and_generation(gcs_emulator):
    bucket = gcs_emulator.new_bucket()
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"one")
    first = fingerprint(f"{bucket}/images")
    assert fingerprint(f"{bucket}/images") == first
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"one")  # rewritten: a new generation
    assert fingerprint(f"{bucket}/images") != first
    model = f"{bucket}/models/model.tar.gz"
    storage.write_bytes(model, b"archive")
    assert fingerprint(model) != fingerprint(f"{bucket}/images")


def test_a_missing_or_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="cannot take a snapshot of .*nowhere"):
        fingerprint(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files there"):
        fingerprint(str(tmp_path / "empty"))


# ------------------------------------------- what can change in place under the same name


def test_a_weights_file_rewritten_in_place_changes_trains_fingerprint_and_nothing_else(tmp_path):
    _write(tmp_path / "images" / "cat" / "1.jpg")
    weights = tmp_path / "backbone.weights.h5"
    _write(weights, b"weights one")
    first = _snapshot(tmp_path / "images", pretrained_weights=str(weights))
    assert first["pretrained_weights"] and _snapshot(tmp_path / "images", pretrained_weights=str(weights)) == first
    _rewrite(weights, b"weights two")  # same name and size
    second = _snapshot(tmp_path / "images", pretrained_weights=str(weights))
    assert second["pretrained_weights"] != first["pretrained_weights"]
    assert {**second, "pretrained_weights": ""} == {**first, "pretrained_weights": ""}
    # Keras' ImageNet file is the backbone's (a cache key already); none is no file.
    for named in ("imagenet", "none", ""):
        assert _snapshot(tmp_path / "images", pretrained_weights=named)["pretrained_weights"] == "", named


def test_a_search_space_file_is_fingerprinted_by_its_content(tmp_path):
    _write(tmp_path / "images" / "cat" / "1.jpg")
    space = tmp_path / "space.json"
    _write(space, b'{"parameters": {"learning_rate": {"min": 0.0001, "max": 0.01}}}')
    first = _snapshot(tmp_path / "images", search_space=str(space))
    assert first["search_space"] and _snapshot(tmp_path / "images", search_space=str(space)) == first
    _rewrite(space, space.read_bytes())  # uploaded again as it was: plan_trials' cache holds
    assert _snapshot(tmp_path / "images", search_space=str(space)) == first
    _rewrite(space, b'{"parameters": {"learning_rate": {"min": 0.0002, "max": 0.01}}}')
    changed = _snapshot(tmp_path / "images", search_space=str(space))
    assert changed["search_space"] != first["search_space"]
    assert {**changed, "search_space": ""} == {**first, "search_space": ""}
    # JSON text is a parameter value, in plan_trials' cache key already.
    assert _snapshot(tmp_path / "images", search_space=space.read_text())["search_space"] == ""


def test_a_manifest_is_fingerprinted_by_the_files_it_names_too(tmp_path):
    images = tmp_path / "images"
    for name in ("cat/1.jpg", "cat/2.jpg", "dog/3.jpg"):
        _write(images / name, b"image " + name.encode())
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"uri,label\nimages/cat/1.jpg,cat\n{images / 'dog' / '3.jpg'},dog\n")  # relative, absolute
    first = fingerprint(str(manifest))
    assert fingerprint(str(manifest)) == first
    _write(images / "cat" / "new.jpg")  # not named: not the dataset
    _write(images / "cat" / "more" / "4.jpg")
    assert fingerprint(str(manifest)) == first
    _rewrite(images / "cat" / "1.jpg", b"IMAGE cat/1.jpg")  # same name and size, another image
    replaced = fingerprint(str(manifest))
    assert replaced != first and fingerprint(str(manifest)) == replaced
    os.remove(images / "dog" / "3.jpg")  # prepare rejects a missing file; its return is a change again
    gone = fingerprint(str(manifest))
    assert gone not in (first, replaced)
    _write(images / "dog" / "3.jpg", b"image dog/3.jpg")
    assert fingerprint(str(manifest)) not in (first, replaced, gone)


def test_a_manifest_on_gcs_costs_a_listing_per_folder_not_a_request_per_file(gcs_emulator, flaky_gcs):
    flaky_gcs.fail_every = 0  # only counting
    bucket = gcs_emulator.new_bucket()
    for label in ("cat", "dog"):
        for index in range(20):
            storage.write_bytes(f"{bucket}/images/{label}/{index}.jpg", b"image")
    storage.write_bytes(f"{bucket}/images/cat/thumbnails/0.jpg", b"thumbnail")  # a subfolder is not listed
    rows = "".join(f"images/{label}/{index}.jpg,{label}\n" for label in ("cat", "dog") for index in range(20))
    manifest = f"{bucket}/list.csv"
    storage.write_text(manifest, "uri,label\n" + rows)
    before = flaky_gcs.forwarded
    first = fingerprint(manifest)
    assert flaky_gcs.forwarded - before <= 4  # the manifest (read, then hashed) and one listing per folder
    assert fingerprint(manifest) == first
    storage.write_bytes(f"{bucket}/images/dog/7.jpg", b"image")  # rewritten as it was: a new generation
    assert fingerprint(manifest) != first


def test_a_weights_file_on_gcs_rewritten_in_place_changes_its_fingerprint(gcs_emulator, tmp_path):
    _write(tmp_path / "images" / "cat" / "1.jpg")
    weights = f"{gcs_emulator.new_bucket()}/backbones/small.weights.h5"
    storage.write_bytes(weights, b"weights")
    first = _snapshot(tmp_path / "images", pretrained_weights=weights)["pretrained_weights"]
    assert first == _snapshot(tmp_path / "images", pretrained_weights=weights)["pretrained_weights"]
    storage.write_bytes(weights, b"weights")
    assert _snapshot(tmp_path / "images", pretrained_weights=weights)["pretrained_weights"] != first


def test_s3_objects_and_a_manifests_files_are_fingerprinted_by_etag_size_and_time(s3_server):
    bucket = s3_server.new_bucket()
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"one")
    first = fingerprint(f"{bucket}/images")
    assert fingerprint(f"{bucket}/images") == first
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"two")  # same name and size, new content
    second = fingerprint(f"{bucket}/images")
    assert second != first
    storage.write_bytes(f"{bucket}/images/dog/2.jpg", b"new")  # an image arrives
    assert fingerprint(f"{bucket}/images") != second
    storage.write_text(f"{bucket}/list.csv", "uri,label\nimages/cat/1.jpg,cat\n")
    named = fingerprint(f"{bucket}/list.csv")
    assert fingerprint(f"{bucket}/list.csv") == named
    storage.write_bytes(f"{bucket}/images/cat/1.jpg", b"333")  # the named file replaced in place
    assert fingerprint(f"{bucket}/list.csv") != named
