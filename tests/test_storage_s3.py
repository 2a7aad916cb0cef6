"""kic.storage on s3:// against a real S3 API on loopback (moto's server; tests/s3_server.py)."""

from __future__ import annotations

import os

import pytest

from kic import storage


def test_s3_round_trip_exists_and_list_with_prefix_semantics(s3_server):
    root = s3_server.new_bucket()
    names = ["data/a.txt", "data/sub/b c.txt", "data/cls[1]/x.jpg", "data2/other.txt"]
    for name in names:
        storage.write_text(f"{root}/{name}", f"content of {name}")
    s3_server.client.put_object(Bucket=root[5:], Key="data/empty-dir/", Body=b"")  # a console's placeholder

    assert storage.read_text(f"{root}/data/sub/b c.txt") == "content of data/sub/b c.txt"
    assert storage.list_files(f"{root}/data") == [f"{root}/data/a.txt", f"{root}/data/cls[1]/x.jpg",
                                                  f"{root}/data/sub/b c.txt"]
    assert storage.list_files(f"{root}/data/") == storage.list_files(f"{root}/data")
    assert storage.list_files(f"{root}/nothing") == []
    assert storage.exists(root) and storage.exists(f"{root}/data") and storage.exists(f"{root}/data/a.txt")
    assert not storage.exists(f"{root}/dat") and not storage.exists(f"{root}/data/a.tx")
    assert not storage.exists("s3://kic-no-such-bucket-here/x")
    assert storage.join(root, "a", "b") == f"{root}/a/b"
    assert storage.is_remote(root) and storage.scheme(root) == "s3://" and not storage.is_gcs(root)


def test_s3_missing_object_bucket_and_bad_uris_raise_storage_errors(s3_server):
    root = s3_server.new_bucket()
    with pytest.raises(storage.StorageNotFoundError, match="no such object") as missing:
        storage.read_bytes(f"{root}/missing.txt")
    assert isinstance(missing.value, FileNotFoundError) and missing.value.uri == f"{root}/missing.txt"
    with pytest.raises(storage.StorageNotFoundError, match="bucket s3://kic-absent-bucket does not exist"):
        storage.list_files("s3://kic-absent-bucket/data")
    with pytest.raises(storage.StorageNotFoundError):
        storage.copy_file("s3://kic-absent-bucket/a", f"{root}/b")
    with pytest.raises(storage.StorageError, match="needs a bucket name"):
        storage.read_bytes("s3:///key")
    with pytest.raises(storage.StorageError, match="expected an s3:// object URI"):
        storage.write_bytes(f"{root}/folder/", b"x")


def test_s3_list_stats_fingerprint_etag_size_and_time(s3_server):
    root = s3_server.new_bucket()
    storage.write_bytes(f"{root}/d/a.bin", b"one")
    storage.write_bytes(f"{root}/d/sub/b.bin", b"three")
    stats = storage.list_stats(f"{root}/d")
    assert [(stat.name, stat.size) for stat in stats] == [("a.bin", 3), ("sub/b.bin", 5)]
    assert [stat.name for stat in storage.list_stats(f"{root}/d/", recursive=False)] == ["a.bin"]
    single = storage.list_stats(f"{root}/d/a.bin")
    assert [(stat.name, stat.size) for stat in single] == [("", 3)]
    # The listing and the object's own HEAD agree, so a manifest's files fingerprint the same either way.
    assert single[0].version == stats[0].version
    storage.write_bytes(f"{root}/d/a.bin", b"two")  # same size, new content
    assert storage.list_stats(f"{root}/d/a.bin")[0].version != single[0].version


def test_s3_list_stats_include_the_version_id_of_a_versioned_bucket(s3_server):
    root = s3_server.new_bucket()
    s3_server.client.put_bucket_versioning(Bucket=root[5:], VersioningConfiguration={"Status": "Enabled"})
    storage.write_bytes(f"{root}/a.bin", b"x")
    version_id = s3_server.client.head_object(Bucket=root[5:], Key="a.bin")["VersionId"]
    assert storage.list_stats(f"{root}/a.bin")[0].version.endswith(":" + version_id)


def test_s3_dirs_copies_local_copy_and_remove_tree(s3_server, tmp_path):
    root = s3_server.new_bucket()
    source = tmp_path / "src"
    (source / "x" / "y").mkdir(parents=True)
    (source / "top.txt").write_text("top")
    (source / "x" / "y" / "deep.txt").write_text("deep")
    assert storage.upload_dir(str(source), f"{root}/up") == [f"{root}/up/top.txt", f"{root}/up/x/y/deep.txt"]
    storage.copy_dir(f"{root}/up", f"{root}/copied")  # within the store
    storage.download_dir(f"{root}/copied", str(tmp_path / "down"))
    assert (tmp_path / "down" / "x" / "y" / "deep.txt").read_text() == "deep"
    storage.copy_file(f"{root}/up/top.txt", str(tmp_path / "one.txt"))
    assert (tmp_path / "one.txt").read_text() == "top"
    storage.makedirs(f"{root}/nothing-made")
    assert not storage.exists(f"{root}/nothing-made")

    with storage.local_copy(f"{root}/up") as folder:
        assert sorted(os.listdir(folder)) == ["top.txt", "x"]
    assert not os.path.exists(folder)
    with storage.local_copy(f"{root}/up/top.txt") as file:
        assert open(file).read() == "top"
    with pytest.raises(storage.StorageNotFoundError), storage.local_copy(f"{root}/none"):
        pass

    s3_server.client.put_object(Bucket=root[5:], Key="up/x/", Body=b"")
    storage.write_text(f"{root}/up2/keep.txt", "kept")  # shares the name's start, not the folder
    storage.remove_tree(f"{root}/up")
    assert storage.list_files(f"{root}/up") == [] and not storage.exists(f"{root}/up")
    assert storage.read_text(f"{root}/up2/keep.txt") == "kept"
    storage.remove_tree(f"{root}/up")  # missing is fine
    with pytest.raises(storage.StorageError, match="refusing to remove everything"):
        storage.remove_tree(root)


def test_s3_and_gcs_copy_both_ways(s3_server, gcs_emulator):
    s3, gcs = s3_server.new_bucket(), gcs_emulator.new_bucket()
    storage.write_text(f"{s3}/a/one.txt", "from s3")
    storage.copy_dir(f"{s3}/a", f"{gcs}/b")
    assert storage.read_text(f"{gcs}/b/one.txt") == "from s3"
    storage.copy_file(f"{gcs}/b/one.txt", f"{s3}/c/again.txt")
    assert storage.read_text(f"{s3}/c/again.txt") == "from s3"


def test_s3_large_upload_goes_multipart(s3_server, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "S3_MULTIPART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    root = s3_server.new_bucket()
    big = tmp_path / "big.bin"
    payload = os.urandom(11 * 1024 * 1024)
    big.write_bytes(payload)
    storage.copy_file(str(big), f"{root}/big.bin")
    etag = s3_server.client.head_object(Bucket=root[5:], Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert storage.read_bytes(f"{root}/big.bin") == payload
    storage.copy_file(f"{root}/big.bin", f"{root}/copy.bin")  # a copy of that size takes parts too
    assert storage.list_stats(f"{root}/copy.bin")[0].size == len(payload)


def test_s3_503_slow_down_is_retried(s3_server, flaky_s3, tmp_path):
    root = s3_server.new_bucket()
    flaky_s3.fail_next(1)
    storage.write_text(f"{root}/a.txt", "survived")
    flaky_s3.fail_next(1)
    assert storage.read_text(f"{root}/a.txt") == "survived"
    flaky_s3.fail_next(1)
    assert storage.list_files(root) == [f"{root}/a.txt"]
    (tmp_path / "f.txt").write_text("file")
    flaky_s3.fail_next(1)
    storage.copy_file(str(tmp_path / "f.txt"), f"{root}/f.txt")
    assert flaky_s3.injected_failures == 4
    assert [line.split()[0] for line in flaky_s3.failed_requests] == ["PUT", "GET", "GET", "PUT"]
    assert storage.read_text(f"{root}/f.txt") == "file"


def test_s3_failures_that_persist_name_the_uri_after_retries(s3_server, flaky_s3, monkeypatch):
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    storage.reset_client()
    root = s3_server.new_bucket()
    flaky_s3.fail_next(2)
    with pytest.raises(storage.StorageError, match=rf"{root}/a.txt: S3 endpoint .* request failed after 1 retries"):
        storage.write_text(f"{root}/a.txt", "x")
    flaky_s3.fail_status = 403
    flaky_s3.fail_next(1)
    with pytest.raises(storage.StoragePermissionError, match="permission denied") as denied:
        storage.read_bytes(f"{root}/a.txt")
    assert isinstance(denied.value, PermissionError)


def test_missing_aws_credentials_say_which_settings(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage.reset_client()
    with pytest.raises(storage.StorageError, match="no AWS credentials.*AWS_ACCESS_KEY_ID.*AWS_ENDPOINT_URL_S3"):
        storage.read_bytes("s3://any-bucket/a.txt")
    storage.reset_client()


def test_the_endpoint_comes_from_aws_endpoint_url_too(s3_server, monkeypatch):
    root = s3_server.new_bucket()
    storage.write_text(f"{root}/a.txt", "here")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # boto3 reads it for every service
    assert storage.read_text(f"{root}/a.txt") == "here"
    assert storage.s3_endpoint() == s3_server.endpoint


def test_minio_uris_share_the_s3_settings_when_no_store_of_their_own_is_set(s3_server):
    # kic compile --s3-credentials-secret/--s3-endpoint: one endpoint for both schemes.
    storage.use_for_minio(None)
    bucket = s3_server.new_bucket().removeprefix("s3://")
    storage.write_text(f"minio://{bucket}/v2/a.txt", "via minio://")
    assert storage.read_text(f"s3://{bucket}/v2/a.txt") == "via minio://"
    assert storage.list_files(f"minio://{bucket}/v2") == [f"minio://{bucket}/v2/a.txt"]
