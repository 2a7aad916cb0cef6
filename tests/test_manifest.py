"""One manifest reader for prepare and batch prediction: a manifest that trains also predicts."""

import json
import os

import pytest

from kic.data import manifest
from kic.data.sources import SourceError, list_source
from kic.serving import predict


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


@pytest.mark.parametrize("header", ["uri,label", "\ufeffURI , Label", "file,label", "image_uri,label,comment"])
def test_every_csv_header_spelling_reads_the_same_for_prepare_and_predict(tmp_path, header):
    path = _write(tmp_path / "lists" / "m.csv", f"{header}\n../images/a.jpg,cat,x\n\n/abs/b.png, dog ,y\n")
    rows = manifest.read_manifest(path, labels=True)
    assert [(row.location, row.name, row.label) for row in rows] == [
        (str(tmp_path / "images" / "a.jpg"), "../images/a.jpg", "cat"), ("/abs/b.png", "/abs/b.png", "dog")]
    assert [row.label for row in manifest.read_manifest(path, labels=False)] == [None, None]
    assert list_source(path).class_names == ("cat", "dog")
    assert predict.list_inputs(path) == ([str(tmp_path / "images" / "a.jpg"), "/abs/b.png"], 0)


def test_jsonl_keys_and_integer_labels(tmp_path):
    lines = [{"uri": "a.jpg", "label": 3}, {"Image": "b.jpg", "label": "x"}, {"file": "c.jpg"}]
    path = _write(tmp_path / "m.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    assert [row.location for row in manifest.read_manifest(path, labels=False)] == [
        str(tmp_path / name) for name in ("a.jpg", "b.jpg", "c.jpg")]
    with pytest.raises(SourceError, match="1 line.*without an image and a label: line 3"):
        manifest.read_manifest(path, labels=True)


def test_text_lists_have_no_labels(tmp_path):
    path = _write(tmp_path / "m.txt", "a.jpg\n\n  b.jpg  \n")
    assert [row.name for row in manifest.read_manifest(path, labels=False)] == ["a.jpg", "b.jpg"]
    with pytest.raises(SourceError, match="carries no labels"):
        manifest.read_manifest(path, labels=True)


def test_every_bad_line_is_named(tmp_path):
    path = _write(tmp_path / "m.csv", "uri,label\na.jpg,cat\nb.jpg,\n,dog\n")
    with pytest.raises(SourceError, match="2 line.*line 3, 4"):
        manifest.read_manifest(path, labels=True)
    with pytest.raises(SourceError, match="1 line.*without an image: line 4"):  # a missing label is fine here
        manifest.read_manifest(path, labels=False)
    with pytest.raises(SourceError, match="header naming an image column"):
        manifest.read_manifest(_write(tmp_path / "n.csv", "name,class\na.jpg,cat\n"), labels=False)


def test_gcs_manifests_resolve_against_their_folder(gcs_emulator):
    from kic import storage

    bucket = gcs_emulator.new_bucket()
    storage.write_text(f"{bucket}/lists/m.csv", "uri,label\n../images/a.jpg,cat\ngs://other/b.jpg,dog\n")
    rows = manifest.read_manifest(f"{bucket}/lists/m.csv", labels=True)
    assert [row.location for row in rows] == [f"{bucket}/images/a.jpg", "gs://other/b.jpg"]


def test_a_huge_csv_field_names_its_line_and_is_no_traceback(tmp_path):
    path = _write(tmp_path / "m.csv", "uri,label\na.jpg,cat\n" + "x" * 200_000 + ",dog\n")
    with pytest.raises(SourceError, match=r"m.csv: line 3 cannot be read as CSV .*field larger than field limit"):
        manifest.read_manifest(path, labels=True)


def test_an_entry_at_a_scheme_kic_cannot_read_is_refused_with_its_line(tmp_path):
    path = _write(tmp_path / "m.jsonl", '{"uri": "a.jpg", "label": "cat"}\n'
                                        '{"uri": "http://example.com/b.jpg", "label": "dog"}\n')
    with pytest.raises(SourceError, match=r"1 line\(s\) name images at http:// URIs, which kic cannot read: line 2"):
        manifest.read_manifest(path, labels=True)
    assert manifest.read_manifest(_write(tmp_path / "g.txt", "gs://b/a.jpg\n"), labels=False)[0].location == \
        "gs://b/a.jpg"


def test_s3_manifests_resolve_against_their_folder(s3_server):
    from kic import storage

    bucket = s3_server.new_bucket()
    storage.write_text(f"{bucket}/lists/m.csv", "uri,label\n../images/a.jpg,cat\ns3://other/b.jpg,dog\n"
                                                "gs://elsewhere/c.jpg,dog\n")
    rows = manifest.read_manifest(f"{bucket}/lists/m.csv", labels=True)
    assert [row.location for row in rows] == [f"{bucket}/images/a.jpg", "s3://other/b.jpg", "gs://elsewhere/c.jpg"]
