"""The object store: the same contract for a local folder and for S3 (moto's server over HTTP), then what only
one of them has (multipart uploads and credentials on S3, path escapes locally)."""
import json
import os
import uuid

import boto3
import pytest
import requests

from integrations.objectstore import (
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    ObjectStoreError,
    S3Store,
    open_store,
)

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, prefix="team/a", endpoint_url=request.getfixturevalue("moto_endpoint"))


def test_put_get_exists_delete(store):
    assert not store.exists("checkpoints/ft-1.pt")
    store.put("checkpoints/ft-1.pt", b"\x00weights\xff")
    assert store.exists("checkpoints/ft-1.pt")
    assert store.get("checkpoints/ft-1.pt") == b"\x00weights\xff"
    store.put("checkpoints/ft-1.pt", b"v2")  # overwrite
    assert store.get("checkpoints/ft-1.pt") == b"v2"
    store.delete("checkpoints/ft-1.pt")
    assert not store.exists("checkpoints/ft-1.pt")
    store.delete("checkpoints/ft-1.pt")  # a second delete is not an error


def test_list_by_prefix_sorted(store):
    for key in ["exports/b.json", "checkpoints/2.pt", "checkpoints/1.pt", "checkpoints-old/x", "images/p/1.png"]:
        store.put(key, key.encode())
    assert store.list() == sorted(
        ["exports/b.json", "checkpoints/2.pt", "checkpoints/1.pt", "checkpoints-old/x", "images/p/1.png"]
    )
    assert store.list("checkpoints/") == ["checkpoints/1.pt", "checkpoints/2.pt"]
    assert store.list("checkpoints") == ["checkpoints-old/x", "checkpoints/1.pt", "checkpoints/2.pt"]
    assert store.list("nothing/") == []


def test_missing_keys_raise_a_clear_key_error(store, tmp_path):
    with pytest.raises(ObjectNotFoundError, match="checkpoints/none.pt") as info:
        store.get("checkpoints/none.pt")
    assert isinstance(info.value, KeyError)
    with pytest.raises(ObjectNotFoundError):
        store.get_file("checkpoints/none.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_files_round_trip(store, tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(os.urandom(3 * MiB + 17))
    store.put_file("checkpoints/model.pt", source)
    store.get_file("checkpoints/model.pt", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "a/../../escape", "a/./b", "a//b", "a\\b", "a/", "nul\x00", "x" * 1025]
)
def test_bad_keys_are_refused(store, key):
    with pytest.raises(InvalidKeyError):
        store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get(key)


# ---- local folder only


def test_local_keys_cannot_escape_through_a_symlink(tmp_path):
    (tmp_path / "outside").mkdir()
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidKeyError, match="outside"):
        store.put("link/secret", b"x")
    assert list((tmp_path / "outside").iterdir()) == []


def test_local_writes_leave_no_partial_files(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "a.pt"
    source.write_bytes(b"0123456789")

    def copy_half_then_fail(src, dst, length=0):
        dst.write(src.read(5))
        raise OSError("disk full")

    monkeypatch.setattr("integrations.objectstore.shutil.copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.put_file("checkpoints/a.pt", source)
    monkeypatch.undo()
    store.put("checkpoints/b.pt", b"ok")
    assert sorted(p.name for p in (tmp_path / "store" / "checkpoints").iterdir()) == ["b.pt"]
    store.delete("checkpoints/b.pt")
    assert list((tmp_path / "store").iterdir()) == []  # empty folders go with the last object


def test_open_store_picks_the_implementation(tmp_path, moto_endpoint, aws_env):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    s3 = open_store("s3://bucket/some/prefix/", moto_endpoint)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    for bad in ("s3:///nobucket", "ftp://host/x"):
        with pytest.raises(ValueError):
            open_store(bad)


# ---- S3 only


def test_large_checkpoint_goes_up_in_parts(s3_bucket, moto_endpoint, tmp_path):
    part = 5 * MiB  # S3's smallest part size
    store = S3Store(s3_bucket, prefix="ckpt", endpoint_url=moto_endpoint, part_size=part)
    source = tmp_path / "big.pt"
    source.write_bytes(os.urandom(2 * part + 123))
    store.put_file("ft-7.pt", source)
    head = boto3.client("s3", endpoint_url=moto_endpoint).head_object(Bucket=s3_bucket, Key="ckpt/ft-7.pt")
    # A multipart object's ETag ends in "-<number of parts>"; a single PUT's does not.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 2 * part + 123
    store.get_file("ft-7.pt", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == source.read_bytes()


def test_prefixes_keep_stores_apart(s3_bucket, moto_endpoint):
    a = S3Store(s3_bucket, prefix="a", endpoint_url=moto_endpoint)
    b = S3Store(s3_bucket, prefix="b", endpoint_url=moto_endpoint)
    a.put("x", b"from a")
    assert b.list() == [] and not b.exists("x")
    assert a.list() == ["x"]
    assert boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 1


def test_listing_follows_pages(s3_bucket, moto_endpoint):
    store = S3Store(s3_bucket, prefix="p", endpoint_url=moto_endpoint)
    store.page_size = 2
    keys = [f"exports/{i:02d}.json" for i in range(7)]
    for key in keys:
        store.put(key, b"{}")
    assert store.list("exports/") == keys


def test_missing_bucket_is_a_clear_error(moto_endpoint, aws_env):
    store = S3Store(f"absent-{uuid.uuid4().hex[:8]}", endpoint_url=moto_endpoint)
    with pytest.raises(ObjectStoreError, match="does not exist"):
        store.list()


def test_unreachable_endpoint_is_a_clear_error(aws_env):
    from support import free_port

    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ObjectStoreError, match="not usable"):
        store.put("x", b"1")


def test_wrong_credentials_are_a_clear_error(s3_bucket, moto_endpoint, monkeypatch, tmp_path):
    iam = boto3.client("iam", endpoint_url=moto_endpoint)
    user = f"clickmask-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    big = tmp_path / "big.pt"
    big.write_bytes(os.urandom(6 * MiB))

    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        # The real key works: the check below fails on the credentials, not on an S3 that refuses everyone.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        good = S3Store(s3_bucket, endpoint_url=moto_endpoint, part_size=5 * MiB)
        good.put("ok", b"1")
        assert good.get("ok") == b"1"

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        bad_secret = S3Store(s3_bucket, endpoint_url=moto_endpoint, part_size=5 * MiB)
        with pytest.raises(ObjectStoreError, match="refused the credentials") as info:
            bad_secret.get("ok")
        assert "SignatureDoesNotMatch" in str(info.value)
        with pytest.raises(ObjectStoreError, match="refused the credentials"):
            bad_secret.put_file("big.pt", big)

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        with pytest.raises(ObjectStoreError, match="refused the credentials"):
            S3Store(s3_bucket, endpoint_url=moto_endpoint).list()
    finally:
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    assert not good.exists("big.pt")
