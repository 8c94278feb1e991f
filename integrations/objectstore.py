"""Where checkpoints, exports and (when configured) images live: a local folder, or S3 through boto3.

Keys are relative, '/'-separated names such as "checkpoints/ft-2.pt". They are validated the same way for both
stores, so a key that works locally works on S3 and no key can reach outside the local folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

MAX_KEY_LENGTH = 1024  # S3's own limit, in UTF-8 bytes
DEFAULT_PART_SIZE = 8 * 1024 * 1024


class ObjectStoreError(RuntimeError):
    """The store refused or could not be reached (bad credentials, missing bucket, network); the message says which."""


class ObjectNotFoundError(KeyError):
    """No object has this key."""

    def __str__(self) -> str:  # KeyError would show the repr of its argument
        return str(self.args[0]) if self.args else "object not found"


class InvalidKeyError(ValueError):
    """The key is not a plain relative name."""


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("a key must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"key longer than {MAX_KEY_LENGTH} bytes")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"key {key!r} must be relative, with '/' separators and no NUL")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKeyError(f"key {key!r} has an empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix may be empty or end with '/', but otherwise follows the key rules."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/") or "/")
    return prefix


class ObjectStore(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a plain string prefix, as in S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (as in S3)."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a file without reading it into memory (checkpoints can be large)."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download to `path`, which only appears once complete; ObjectNotFoundError if there is none."""


class LocalStore(ObjectStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # resolve() follows symlinks, so a link inside the folder cannot point the key elsewhere either.
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKeyError(f"key {key!r} leads outside the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        with self._atomic(self.path(key)) as handle:
            handle.write(data)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        if not self.root.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # an upload in progress
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # Remove folders left empty, as S3 has no folders to leave behind.
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as source, self._atomic(self.path(key)) as handle:
            shutil.copyfileobj(source, handle, 1024 * 1024)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        source = self.path(key)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.root}")
        with open(source, "rb") as handle, _atomic_file(Path(path)) as target:
            shutil.copyfileobj(handle, target, 1024 * 1024)

    def _atomic(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return _atomic_file(path)


class _atomic_file:
    """Write to a temporary file beside `path` and rename it into place, so readers never see half a file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path.parent)
        self.handle = os.fdopen(fd, "wb")
        return self.handle

    def __exit__(self, exc_type, exc, tb):
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


# S3 error codes that mean "these credentials are not accepted here", as opposed to a missing object.
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                    "403", "Forbidden"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store(ObjectStore):
    """A bucket (and optional prefix) on S3 or an S3-compatible server. Credentials come from boto3's standard
    chain (AWS_* variables, ~/.aws files, instance roles); `endpoint_url` points at a non-AWS server."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 part_size: int = DEFAULT_PART_SIZE, client=None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix, endpoint_url
        # Bounded timeouts and retries: an unreachable store must become an error, not a stuck training job.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self.client = client or boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        # Files above one part go up in parts of this size, several at a time, and a failed part is retried alone.
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self.page_size = 1000  # keys per listing request (S3's maximum); lowered by tests to check paging

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, key: str | None):
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{self.full_key(key) if key else self.prefix}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES and key is not None:
                raise ObjectNotFoundError(f"no object {key!r} at {where}") from None
            if code in CREDENTIAL_CODES:
                raise ObjectStoreError(f"S3 refused the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID, "
                                       "AWS_SECRET_ACCESS_KEY or the profile in use") from None
            if code == "NoSuchBucket":
                raise ObjectStoreError(f"bucket {self.bucket!r} does not exist") from None
            raise ObjectStoreError(f"S3 error at {where}: {code or exc}") from None
        except (S3UploadFailedError, S3TransferFailedError) as exc:
            # boto3's transfer manager wraps the S3 error in its message only.
            text = str(exc)
            if any(code in text for code in CREDENTIAL_CODES - {"403"}):
                raise ObjectStoreError(f"S3 refused the credentials for {where}: {text}") from None
            raise ObjectStoreError(f"S3 transfer to {where} failed: {text}") from None
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
            raise ObjectStoreError(f"S3 at {self.endpoint_url or 'AWS'} not usable for {where}: {exc}") from None

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data)

    def get(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors(None):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                keys.extend(item["Key"][len(base):] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with self._errors(key):
            self.client.upload_file(os.fspath(path), self.bucket, self.full_key(key), Config=self.transfer)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            with self._errors(key):
                self.client.download_file(self.bucket, self.full_key(key), tmp, Config=self.transfer)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def open_store(url: str, s3_endpoint_url: str | None = None) -> ObjectStore:
    """`s3://bucket/prefix` gives an S3Store; anything else is a local folder path."""
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"no bucket in store URL {url!r}: use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=s3_endpoint_url)
    if "://" in url:
        raise ValueError(f"unsupported store URL {url!r}: use a folder path or s3://bucket/prefix")
    return LocalStore(url)
