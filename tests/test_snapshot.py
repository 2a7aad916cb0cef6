"""Fingerprints of what the sources are now: they change when the data does, and only then."""

import os
import time

import pytest

from kic import storage
from kic.data.snapshot import fingerprint
from kic.errors import SourceError


def _write(path, data: bytes = b"image") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


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
