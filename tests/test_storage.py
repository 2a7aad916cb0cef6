"""kic.storage against local paths and a real GCS JSON API (gcp-storage-emulator on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kic import storage

# Names that break naive code: glob characters, spaces, non-ASCII, URL-special.
TRICKY_NAMES = ["cls[1]/a.jpg", "cls[1]/b*.jpg", "sp ace/c d.jpg", "ünï/ç.jpg", "q/what?#%.txt"]


def _tree(root: Path, names: list[str]) -> dict[str, bytes]:
    contents = {name: f"content of {name}".encode() + bytes(range(256)) for name in names}
    for name, data in contents.items():
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return contents


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def _seed(gcs_emulator, bucket_uri: str, contents: dict[str, bytes]) -> None:
    """Create objects with the raw client, independently of kic.storage."""
    bucket = gcs_emulator.client.bucket(bucket_uri.removeprefix("gs://"))
    for name, data in contents.items():
        bucket.blob(name).upload_from_string(data)


def _object_names(gcs_emulator, bucket_uri: str) -> list[str]:
    return sorted(blob.name for blob in gcs_emulator.client.list_blobs(bucket_uri.removeprefix("gs://")))


# --------------------------------------------------------------------------- local


def test_local_round_trip_is_atomic_and_creates_parents(tmp_path):
    target = str(tmp_path / "a" / "b" / "file.bin")
    storage.write_bytes(target, b"\x00\xffdata")
    storage.write_text(str(tmp_path / "t.txt"), "héllo")
    assert storage.read_bytes(target) == b"\x00\xffdata"
    assert storage.read_text(str(tmp_path / "t.txt")) == "héllo"
    storage.write_bytes(target, b"replaced")
    assert storage.read_bytes(target) == b"replaced"
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["file.bin"]  # no temp files left


def test_local_missing_file_is_a_storage_not_found_error(tmp_path):
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(storage.StorageNotFoundError, match="nope.bin") as info:
        storage.read_bytes(missing)
    assert isinstance(info.value, FileNotFoundError) and info.value.uri == missing
    with pytest.raises(storage.StorageNotFoundError, match="nope"):
        storage.list_files(str(tmp_path / "nope"))


def test_local_list_files_recursive_sorted_with_tricky_names(tmp_path):
    root = tmp_path / "data"
    _tree(root, TRICKY_NAMES + ["deep/er/x.bin"])
    expected = sorted(os.path.join(str(root), *name.split("/")) for name in TRICKY_NAMES + ["deep/er/x.bin"])
    assert storage.list_files(str(root)) == expected


def test_local_list_files_follows_symlinked_dirs_without_looping(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _tree(elsewhere, ["x.jpg"])
    root = tmp_path / "data"
    _tree(root, ["own.jpg"])
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    listed = storage.list_files(str(root))
    assert os.path.join(str(root), "linked", "x.jpg") in listed
    assert os.path.join(str(root), "own.jpg") in listed
    assert len(listed) == 2


def test_local_copy_dir_and_remove_tree(tmp_path):
    contents = _tree(tmp_path / "src", TRICKY_NAMES)
    written = storage.copy_dir(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert len(written) == len(TRICKY_NAMES)
    assert _read_tree(tmp_path / "dst") == contents
    storage.remove_tree(str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
    storage.remove_tree(str(tmp_path / "dst"))  # missing is fine
    with pytest.raises(storage.StorageError, match="root"):
        storage.remove_tree("/")


def test_local_copy_yields_the_path_itself(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("x")
    with storage.local_copy(str(path)) as local:
        assert local == str(path)


# --------------------------------------------------------------------------- GCS


def test_gcs_round_trip_bytes_and_text(gcs_emulator):
    root = gcs_emulator.new_bucket()
    payload = bytes(range(256)) * 17
    storage.write_bytes(f"{root}/dir/blob.bin", payload)
    storage.write_text(f"{root}/ünï code/t e[x]t.txt", "héllo\n")
    storage.write_bytes(f"{root}/empty", b"")
    assert storage.read_bytes(f"{root}/dir/blob.bin") == payload
    assert storage.read_text(f"{root}/ünï code/t e[x]t.txt") == "héllo\n"
    assert storage.read_bytes(f"{root}/empty") == b""
    # Stored under the exact name: visible to an independent client.
    assert _object_names(gcs_emulator, root) == ["dir/blob.bin", "empty", "ünï code/t e[x]t.txt"]


def test_gcs_large_object_takes_the_resumable_path(gcs_emulator):
    root = gcs_emulator.new_bucket()
    payload = os.urandom(9 * 1024 * 1024)  # above the 8 MiB multipart limit
    storage.write_bytes(f"{root}/big.bin", payload)
    assert storage.read_bytes(f"{root}/big.bin") == payload


def test_gcs_list_files_prefix_semantics_and_tricky_names(gcs_emulator):
    root = gcs_emulator.new_bucket()
    inside = [f"data/{name}" for name in TRICKY_NAMES + ["deep/er/x.bin"]]
    outside = ["data2/other.jpg", "data.txt", "top.bin"]
    placeholders = ["data/", "data/deep/"]
    _seed(gcs_emulator, root, {name: b"x" for name in inside + outside + placeholders})

    expected = sorted(f"{root}/{name}" for name in inside)
    assert storage.list_files(f"{root}/data") == expected
    assert storage.list_files(f"{root}/data/") == expected
    assert storage.list_files(f"{root}/data/cls[1]") == [
        f"{root}/data/cls[1]/a.jpg",
        f"{root}/data/cls[1]/b*.jpg",
    ]
    assert storage.list_files(root) == sorted(f"{root}/{name}" for name in inside + outside)
    assert storage.list_files(f"{root}/no-such-prefix") == []


def test_gcs_exists(gcs_emulator):
    root = gcs_emulator.new_bucket()
    _seed(gcs_emulator, root, {"d/cls[1]/a.jpg": b"x"})
    assert storage.exists(f"{root}/d/cls[1]/a.jpg")
    assert storage.exists(f"{root}/d")  # a non-empty prefix is a directory
    assert storage.exists(f"{root}/d/cls[1]/")
    assert storage.exists(root)
    assert not storage.exists(f"{root}/d/cls[1]/b.jpg")
    assert not storage.exists(f"{root}/d/cls")  # prefixes match whole path segments only
    assert not storage.exists("gs://kic-no-such-bucket/a.jpg")
    assert not storage.exists("gs://kic-no-such-bucket")


def test_gcs_missing_object_and_bucket_raise_storage_error_naming_the_uri(gcs_emulator):
    root = gcs_emulator.new_bucket()
    missing_object = f"{root}/no/such.jpg"
    with pytest.raises(storage.StorageNotFoundError) as info:
        storage.read_bytes(missing_object)
    assert missing_object in str(info.value) and "no such object" in str(info.value)
    assert isinstance(info.value, OSError) and isinstance(info.value, FileNotFoundError)
    assert info.value.__cause__ is None and info.value.__suppress_context__

    missing_bucket = "gs://kic-no-such-bucket/a/b.jpg"
    for call in (storage.read_bytes, storage.list_files):
        with pytest.raises(
            storage.StorageError, match="bucket gs://kic-no-such-bucket does not exist"
        ) as info:
            call(missing_bucket)
        assert missing_bucket in str(info.value)
    with pytest.raises(storage.StorageNotFoundError, match="kic-no-such-bucket"):
        storage.write_bytes("gs://kic-no-such-bucket/x.bin", b"x")


def test_gcs_uri_without_object_name_is_rejected_clearly(gcs_emulator):
    root = gcs_emulator.new_bucket()
    with pytest.raises(storage.StorageError, match="object URI"):
        storage.read_bytes(f"{root}/dir/")
    with pytest.raises(storage.StorageError, match="bucket name"):
        storage.read_bytes("gs:///x")


def test_read_many_keeps_input_order_and_reports_per_file_errors(gcs_emulator, tmp_path):
    root = gcs_emulator.new_bucket()
    contents = {f"{root}/img/{index:03d}[x].bin": os.urandom(100 + index) for index in range(40)}
    _seed(gcs_emulator, root, {uri.removeprefix(f"{root}/"): data for uri, data in contents.items()})
    local_file = tmp_path / "local.bin"
    local_file.write_bytes(b"local")
    uris = list(reversed(contents))  # not the listing order
    missing = f"{root}/img/missing.bin"
    uris[10:10] = [missing, str(local_file), str(tmp_path / "missing-local.bin")]

    results = list(storage.read_many(iter(uris), workers=8))

    assert [uri for uri, _ in results] == uris
    by_uri = dict(results)
    for uri, data in contents.items():
        assert by_uri[uri] == data
    assert by_uri[str(local_file)] == b"local"
    assert isinstance(by_uri[missing], storage.StorageNotFoundError) and missing in str(by_uri[missing])
    assert isinstance(by_uri[str(tmp_path / "missing-local.bin")], FileNotFoundError)


def test_read_many_can_be_abandoned_early(gcs_emulator):
    root = gcs_emulator.new_bucket()
    uris = [f"{root}/f{index}" for index in range(100)]
    _seed(gcs_emulator, root, {uri.removeprefix(f"{root}/"): b"x" for uri in uris[:1]})
    reader = storage.read_many(uris, workers=4)
    first_uri, first = next(reader)
    reader.close()  # must not wait for the 99 remaining reads to be issued
    assert (first_uri, first) == (uris[0], b"x")


def test_upload_and_download_dir_round_trip(gcs_emulator, tmp_path):
    root = gcs_emulator.new_bucket()
    names = TRICKY_NAMES + ["deep/er/x.bin"]
    contents = _tree(tmp_path / "src", names)

    uploaded = storage.upload_dir(str(tmp_path / "src"), f"{root}/run/1")

    assert uploaded == sorted(f"{root}/run/1/{name}" for name in names)
    assert _object_names(gcs_emulator, root) == sorted(f"run/1/{name}" for name in names)
    storage.download_dir(f"{root}/run/1", str(tmp_path / "back"))
    assert _read_tree(tmp_path / "back") == contents


def test_copy_dir_between_gcs_prefixes(gcs_emulator):
    src_root, dst_root = gcs_emulator.new_bucket(), gcs_emulator.new_bucket()
    contents = {f"model/{name}": name.encode() * 3 for name in TRICKY_NAMES}
    _seed(gcs_emulator, src_root, contents)
    storage.copy_dir(f"{src_root}/model", f"{dst_root}/copied/")
    assert {uri: storage.read_bytes(uri) for uri in storage.list_files(dst_root)} == {
        f"{dst_root}/copied/{name.removeprefix('model/')}": data for name, data in contents.items()
    }


@pytest.mark.parametrize("name", ["d/./x.txt", "d//x.txt"])
def test_download_dir_refuses_names_without_a_safe_local_path(gcs_emulator, tmp_path, name):
    root = gcs_emulator.new_bucket()
    _seed(gcs_emulator, root, {name: b"x"})
    with pytest.raises(storage.StorageError, match="cannot be stored safely") as info:
        storage.download_dir(f"{root}/d", str(tmp_path / "target"))
    assert f"{root}/{name}" in str(info.value)


def test_object_names_cannot_escape_the_download_dir(tmp_path):
    # The emulator rejects ".." names, real GCS accepts them: check the guard directly.
    with pytest.raises(storage.StorageError, match="cannot be stored safely"):
        storage._local_target(str(tmp_path), "../../escape.txt", "gs://b/d/../../escape.txt")
    assert storage._local_target(str(tmp_path), "a/b c.txt", "gs://b/a/b c.txt") == str(
        tmp_path / "a" / "b c.txt"
    )


def test_local_copy_downloads_objects_and_prefixes_then_cleans_up(gcs_emulator):
    root = gcs_emulator.new_bucket()
    _seed(gcs_emulator, root, {"w/weights.h5": b"weights", "saved/a/b.pb": b"pb", "saved/v.idx": b"idx"})
    with storage.local_copy(f"{root}/w/weights.h5") as path:
        assert os.path.basename(path) == "weights.h5" and Path(path).read_bytes() == b"weights"
    assert not os.path.exists(path)
    with storage.local_copy(f"{root}/saved") as directory:
        assert os.path.basename(directory) == "saved"
        assert _read_tree(Path(directory)) == {"a/b.pb": b"pb", "v.idx": b"idx"}
    assert not os.path.exists(directory)
    with pytest.raises(storage.StorageNotFoundError, match="nothing"), storage.local_copy(f"{root}/nothing"):
        pass


def test_remove_tree_on_gcs_deletes_exactly_the_prefix(gcs_emulator):
    root = gcs_emulator.new_bucket()
    _seed(
        gcs_emulator, root, {"out/": b"", "out/a": b"1", "out/b/c[1]": b"2", "out": b"3", "outside/x": b"4"}
    )
    storage.remove_tree(f"{root}/out")
    assert _object_names(gcs_emulator, root) == ["outside/x"]
    storage.remove_tree(f"{root}/out")  # already gone: fine
    with pytest.raises(storage.StorageError, match="refusing"):
        storage.remove_tree(f"{root}/")


def test_makedirs_is_local_only(tmp_path, gcs_emulator):
    storage.makedirs(str(tmp_path / "x" / "y"))
    assert (tmp_path / "x" / "y").is_dir()
    root = gcs_emulator.new_bucket()
    storage.makedirs(f"{root}/x/y")
    assert _object_names(gcs_emulator, root) == []


# --------------------------------------------------------------------------- transient failures


def test_transient_503s_are_retried_for_list_read_and_write(gcs_emulator, flaky_gcs, tmp_path):
    root = gcs_emulator.new_bucket()
    contents = {f"{root}/flaky/{index}/cls[{index}].bin": os.urandom(1000 + index) for index in range(12)}

    for uri, data in contents.items():
        storage.write_bytes(uri, data)
    big = f"{root}/flaky/big.bin"
    contents[big] = os.urandom(9 * 1024 * 1024)
    flaky_gcs.fail_next()  # the request that opens the resumable upload session
    storage.write_bytes(big, contents[big])
    flaky_gcs.fail_next()  # fails exactly the listing call (aims each retry path deterministically)
    listed = storage.list_files(f"{root}/flaky")
    read_back = dict(storage.read_many(listed))
    _tree(tmp_path / "tree", ["a/b.bin", "c.bin"])
    storage.upload_dir(str(tmp_path / "tree"), f"{root}/tree")
    storage.download_dir(f"{root}/tree", str(tmp_path / "tree-back"))

    failed = flaky_gcs.failed_requests
    assert flaky_gcs.injected_failures == len(failed) > 2
    assert any("uploadType=multipart" in line for line in failed)
    assert any("uploadType=resumable" in line for line in failed)
    assert any(line.startswith("GET /storage/v1/b/") and "/o?" in line for line in failed)  # the listing
    assert any(line.startswith("GET /download/") for line in failed)
    assert listed == sorted(contents)
    assert read_back == contents
    assert _read_tree(tmp_path / "tree-back") == _read_tree(tmp_path / "tree")
    # Checked through the emulator directly, past the proxy.
    bucket = gcs_emulator.client.bucket(root.removeprefix("gs://"))
    for uri, data in contents.items():
        assert bucket.blob(uri.removeprefix(f"{root}/")).download_as_bytes() == data


def test_client_cache_follows_the_endpoint(gcs_emulator, flaky_gcs):
    root = gcs_emulator.new_bucket()
    flaky_gcs.fail_every = 0
    storage.write_bytes(f"{root}/a", b"a")
    assert flaky_gcs.forwarded > 0  # the cached client was not the emulator's


def test_permission_denied_becomes_a_storage_permission_error(gcs_emulator, flaky_gcs):
    root = gcs_emulator.new_bucket()
    flaky_gcs.fail_every, flaky_gcs.fail_status = 1, 403
    uri = f"{root}/secret.bin"
    for call in (storage.read_bytes, storage.list_files, lambda target: storage.write_bytes(target, b"x")):
        with pytest.raises(storage.StoragePermissionError, match="permission denied") as info:
            call(uri)
        assert uri in str(info.value) and isinstance(info.value, PermissionError)
        assert info.value.gcs_error is not None and info.value.__cause__ is None


def test_missing_credentials_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    storage.reset_client()
    try:
        with pytest.raises(storage.StorageError, match="no Google Cloud credentials found"):
            storage.read_bytes("gs://any-bucket/any-object")
    finally:
        storage.reset_client()


def test_a_fifo_or_a_device_is_refused_before_it_is_read(tmp_path):
    """A manifest, search space or weights file that is a FIFO would hang every reader; /dev/zero never ends."""
    import time

    fifo = tmp_path / "manifest.csv"
    os.mkfifo(fifo)
    started = time.monotonic()
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(storage.StorageError, match="not a regular file"):
            storage.read_bytes(path)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("store", ["local", "gcs", "s3"])
def test_a_read_with_a_limit_stops_at_it(store, request, tmp_path, monkeypatch):
    """prepare and batch predict read images with their byte limit: an object over it raises
    ObjectTooLarge having received at most the limit and one network chunk (GCS streams it; S3 and a
    local file tell the size first, and are not read at all), and nothing at or under it changes."""
    limit = 64 * 1024
    contents = {"empty.bin": b"", "at.bin": os.urandom(limit), "over.bin": os.urandom(limit + 1),
                "huge.bin": os.urandom(8 * 1024 * 1024)}
    if store == "local":
        root = str(tmp_path)
        for name, data in contents.items():
            (tmp_path / name).write_bytes(data)
    elif store == "gcs":
        emulator = request.getfixturevalue("gcs_emulator")
        root = emulator.new_bucket()
        _seed(emulator, root, contents)
    else:
        root = request.getfixturevalue("s3_server").new_bucket()
        for name, data in contents.items():
            storage.write_bytes(f"{root}/{name}", data)
    received: list[int] = []

    class Counting(storage._CappedSink):
        def write(self, chunk) -> int:
            received.append(len(chunk))
            return super().write(chunk)

    monkeypatch.setattr(storage, "_CappedSink", Counting)
    assert storage.read_bytes(f"{root}/empty.bin", limit=limit) == b""
    assert storage.read_bytes(f"{root}/at.bin", limit=limit) == contents["at.bin"]
    for name in ("over.bin", "huge.bin"):
        received.clear()
        with pytest.raises(storage.ObjectTooLarge) as raised:
            storage.read_bytes(f"{root}/{name}", limit=limit)
        size = len(contents[name])
        if store == "gcs":
            assert str(raised.value) == "the file holds more than the limit of 65,536 bytes"
            assert sum(received) <= limit + 1024 * 1024  # a chunk past the limit, not the 8 MB
        else:
            assert str(raised.value) == f"the file is {size:,} bytes, over the limit of 65,536 bytes"
            assert raised.value.size == size and not received
    assert storage.read_bytes(f"{root}/huge.bin") == contents["huge.bin"]  # no limit: all of it
    results = dict(storage.read_many([f"{root}/{name}" for name in contents], workers=2, limit=limit))
    assert isinstance(results[f"{root}/huge.bin"], storage.ObjectTooLarge) and results[f"{root}/at.bin"]
