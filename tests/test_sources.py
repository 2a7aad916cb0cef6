import json
import os

import pytest

from kic.data.sources import LocalFile, SourceError, list_source, location_of, read_payloads, validate_class_names


def _write(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_folder_listing_classes_nested_files_and_ignored(tmp_path):
    root = tmp_path / "data"
    _write(root / "dogs" / "a.jpg")
    _write(root / "cats" / "b.jpg")
    _write(root / "cats" / "nested" / "deeper" / "c.png")
    _write(root / "stray.jpg")
    _write(root / "cats" / ".DS_Store")
    _write(root / ".ipynb_checkpoints" / "x.jpg")
    os.makedirs(root / "empty_class")

    listing = list_source(str(root))

    assert listing.kind == "folder"
    assert listing.class_names == ("cats", "dogs", "empty_class")
    assert [(item.name, item.label) for item in listing.parts["train"]] == [
        ("cats/b.jpg", "cats"), ("cats/nested/deeper/c.png", "cats"), ("dogs/a.jpg", "dogs")]
    assert listing.parts["train"][0].location == os.path.join(str(root), "cats", "b.jpg")
    assert listing.ignored == [".ipynb_checkpoints/x.jpg", "cats/.DS_Store", "stray.jpg"]
    # The stored name leads back to the file without listing again (the export's parity check reads originals).
    assert all(location_of(str(root), item.name) == item.location for item in listing.parts["train"])


def test_what_the_reference_does_not_read_is_ignored_not_rejected(tmp_path):
    """OS metadata, notes beside the images, AppleDouble files and a zip's __MACOSX folder are not images,
    not classes; a file that claims to be an image (or could be one) is still listed, for its content to judge."""
    root = tmp_path / "data"
    _write(root / "cats" / "a.jpg")
    ignored = ["cats/Thumbs.db", "cats/desktop.ini", "cats/notes.txt", "cats/labels.JSON", "cats/boxes.csv",
               "cats/README.md", "cats/meta.yaml", "cats/._a.jpg", "dogs/sub/.hidden/b.jpg", "__MACOSX/cats/._a.jpg",
               "dogs/__MACOSX/x.jpg"]
    for name in ignored:
        _write(root / name)
    _write(root / "dogs" / "b.jpg")
    _write(root / "dogs" / "text_posing.jpg", b"hello")  # claims to be an image: prepare rejects it
    _write(root / "dogs" / "scan.tif")
    _write(root / "dogs" / "no_extension")
    listing = list_source(str(root))
    assert listing.class_names == ("cats", "dogs")
    assert sorted(listing.ignored) == sorted(ignored)
    assert [item.name for item in listing.parts["train"]] == [
        "cats/a.jpg", "dogs/b.jpg", "dogs/no_extension", "dogs/scan.tif", "dogs/text_posing.jpg"]


def test_class_order_is_python_sorted_on_str(tmp_path):
    for name in ("b", "B", "a", "café", "日本", "cls[1]", "Z"):
        _write(tmp_path / name / "f.jpg")
    with pytest.raises(SourceError, match="'b'"):  # 'B' and 'b' collide once case is ignored
        list_source(str(tmp_path))
    os.remove(tmp_path / "B" / "f.jpg")
    os.rmdir(tmp_path / "B")
    assert list_source(str(tmp_path)).class_names == ("Z", "a", "b", "café", "cls[1]", "日本")


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(SourceError, match="no such directory"):
        list_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no class folders"):
        list_source(str(tmp_path))
    _write(tmp_path / "only_root.jpg")
    with pytest.raises(SourceError, match="no class folders"):
        list_source(str(tmp_path))
    os.makedirs(tmp_path / "cls")
    with pytest.raises(SourceError, match="no image files"):
        list_source(str(tmp_path))


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", ".", "", "  ", "tab\there", "bell\x07", "line\nbreak",
                                  "zero\u200bwidth"])
def test_bad_class_names_are_refused(name):
    with pytest.raises(SourceError, match="unusable class names") as error:
        validate_class_names(["good", name])
    assert repr(name) in str(error.value)
    assert "'good'" not in str(error.value)


def test_names_colliding_after_nfc_and_casefold_are_refused():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    with pytest.raises(SourceError, match="Unicode form"):
        validate_class_names([composed, decomposed])
    with pytest.raises(SourceError, match="'STRASSE'|'straße'"):
        validate_class_names(["straße", "STRASSE"])
    validate_class_names(["cls[1]", "café", "日本", "a*b?", "with space", "a..b"])


def test_bad_folder_names_refused_when_listing(tmp_path):
    _write(tmp_path / "ok" / "a.jpg")
    _write(tmp_path / "bad\x01name" / "a.jpg")
    _write(tmp_path / "Ok" / "a.jpg")
    with pytest.raises(SourceError) as error:
        list_source(str(tmp_path))
    assert "'bad\\x01name'" in str(error.value) and "'ok'" in str(error.value)


def test_csv_manifest_with_relative_absolute_and_header_variants(tmp_path):
    _write(tmp_path / "images" / "1.jpg")
    absolute = str(tmp_path / "elsewhere.jpg")
    for column in ("uri", "image", "path"):
        manifest = tmp_path / "lists" / f"m_{column}.csv"
        os.makedirs(manifest.parent, exist_ok=True)
        text = f"\ufeff{column},label\n../images/1.jpg,cat\n\n{absolute}, dog \n"
        manifest.write_text(text, encoding="utf-8")
        listing = list_source(str(manifest))
        assert listing.kind == "manifest"
        assert listing.class_names == ("cat", "dog")
        by_name = {item.name: item for item in listing.parts["train"]}
        assert by_name["../images/1.jpg"].location == str(tmp_path / "images" / "1.jpg")
        assert by_name["../images/1.jpg"].label == "cat"
        assert by_name[absolute].location == absolute and by_name[absolute].label == "dog"
        assert all(location_of(str(manifest), item.name) == item.location for item in listing.parts["train"])


def test_csv_manifest_errors(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.jpg,cat\n")
    with pytest.raises(SourceError, match="header"):
        list_source(str(manifest))
    manifest.write_text("uri,label\na.jpg,cat\nb.jpg,\n,dog\n")
    with pytest.raises(SourceError, match="2 line.*line 3, 4"):
        list_source(str(manifest))
    manifest.write_text("uri,label\n")
    with pytest.raises(SourceError, match="no image files"):
        list_source(str(manifest))
    manifest.write_text("uri,label\na.jpg,../escape\n")
    with pytest.raises(SourceError, match="unusable class names"):
        list_source(str(manifest))
    with pytest.raises(SourceError, match="cannot read manifest"):
        list_source(str(tmp_path / "missing.csv"))


def test_jsonl_manifest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [{"uri": "a.jpg", "label": "日本"}, {"image": "b.jpg", "label": "cls[1]"},
             {"path": "c.jpg", "label": 3}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    listing = list_source(str(manifest))
    assert listing.class_names == ("3", "cls[1]", "日本")
    assert [(item.location, item.label) for item in listing.parts["train"]] == [
        (str(tmp_path / "a.jpg"), "日本"), (str(tmp_path / "b.jpg"), "cls[1]"),
        (str(tmp_path / "c.jpg"), "3")]
    manifest.write_text('{"uri": "a.jpg", "label": "x"}\nnot json\n{"uri": "b.jpg"}\n')
    with pytest.raises(SourceError, match="line 2, 3"):
        list_source(str(manifest))


def test_local_payloads_are_read_by_the_worker(tmp_path):
    _write(tmp_path / "c" / "a.jpg", b"abc")
    listing = list_source(str(tmp_path))
    [(item, payload)] = list(read_payloads(listing, listing.parts["train"]))
    assert payload == LocalFile(item.location)


def test_gcs_folder_and_manifest_listing(gcs_emulator):
    from kic import storage

    root = gcs_emulator.new_bucket() + "/data"
    storage.write_bytes(f"{root}/cls[1]/a b.jpg", b"one")
    storage.write_bytes(f"{root}/café/x/y.jpg", b"two")
    storage.write_bytes(f"{root}/stray.txt", b"three")
    storage.write_text(f"{root}/lists/m.csv", "uri,label\n../cls[1]/a b.jpg,k\n")

    listing = list_source(root + "/")
    assert listing.class_names == ("café", "cls[1]")  # a manifest beside the images is no image, nor a class
    assert [item.name for item in listing.parts["train"]] == ["café/x/y.jpg", "cls[1]/a b.jpg"]
    assert listing.ignored == ["lists/m.csv", "stray.txt"]
    payloads = {item.name: payload for item, payload in read_payloads(listing, listing.parts["train"])}
    assert payloads["cls[1]/a b.jpg"] == b"one"

    manifest = list_source(f"{root}/lists/m.csv")
    assert manifest.parts["train"][0].location == f"{root}/cls[1]/a b.jpg"
    for source, items in ((root + "/", listing.parts["train"]), (f"{root}/lists/m.csv", manifest.parts["train"])):
        assert all(location_of(source, item.name) == item.location for item in items)
    assert location_of("tfds:mnist", "tfds:mnist/test/00000001") is None
