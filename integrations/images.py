"""Fetch a task's image and decode it to RGB, from the places a Label Studio task may name.

    /data/upload/..., /data/local-files/?d=...  -> Label Studio (LABEL_STUDIO_URL), with its API key
    s3://bucket/key                             -> boto3 with this backend's own credentials, allowed buckets only
    http(s)://host/...                          -> only from allowed hosts (Label Studio's host is always allowed)

Task URLs are untrusted (a server-side request forgery risk): nothing else is fetched, a redirect is followed only
to an allowed host, nothing but Label Studio's /data/ files (no '..' segments) is fetched from Label Studio, bodies
and pixels are capped, and every failure is an ImageFetchError whose message names the image without its query
string and never carries a credential. Decoded images are kept in an LRU cache bounded by bytes; cached arrays are
read-only because callers share them.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import cv2
import numpy as np
import requests
import urllib3

from workers.model.image import MAX_PIXELS

from .env import EnvReader, SettingsError
from .image_header import image_size
from .label_studio.auth import LabelStudioAuth, LabelStudioAuthError

MAX_REDIRECTS = 3
CHUNK = 64 * 1024


class ImageFetchError(RuntimeError):
    """The image could not be fetched or decoded, or is not allowed; the message is safe to show."""


@dataclass(frozen=True)
class ImageSettings:
    label_studio_url: str | None = None  # e.g. http://127.0.0.1:8080
    label_studio_api_key: str | None = field(default=None, repr=False)  # a personal access token
    allowed_hosts: tuple[str, ...] = ()  # "host" or "host:port", lower case
    allowed_buckets: tuple[str, ...] = ()
    s3_endpoint_url: str | None = None
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = MAX_PIXELS  # the model's own cap (workers.model.image)
    cache_bytes: int = 512 * 1024 * 1024
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ImageSettings:
        read = EnvReader(environ)
        get, names = read.text, read.names
        number = lambda name, default, kind=int: read.number(name, default, kind, low=1 if kind is int else 0.001)

        ls_url = get("LABEL_STUDIO_URL")
        if ls_url and urlsplit(ls_url).scheme not in ("http", "https"):
            raise SettingsError("LABEL_STUDIO_URL must be an http(s) URL")
        return cls(
            label_studio_url=ls_url.rstrip("/") if ls_url else None,
            label_studio_api_key=get("LABEL_STUDIO_API_KEY"),
            allowed_hosts=names("CLICKMASK_ALLOWED_IMAGE_HOSTS"),
            allowed_buckets=names("CLICKMASK_ALLOWED_S3_BUCKETS"),
            s3_endpoint_url=get("CLICKMASK_S3_ENDPOINT_URL"),
            max_image_bytes=number("CLICKMASK_MAX_IMAGE_BYTES", cls.max_image_bytes),
            max_image_pixels=number("CLICKMASK_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            cache_bytes=int(number("CLICKMASK_IMAGE_CACHE_MB", cls.cache_bytes / 2**20, float) * 2**20),
            timeout_s=number("CLICKMASK_IMAGE_TIMEOUT_S", cls.timeout_s, float),
        )


def describe(uri: str) -> str:
    """The URI for messages: no query string (presigned URLs carry credentials there), no user:password@, at most
    200 characters."""
    text = uri.split("?", 1)[0] if not uri.startswith("/data/local-files/") else uri
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        text = f"{scheme}://{rest.split('@', 1)[1]}"
    return text if len(text) <= 200 else text[:197] + "..."


def climbs(url: str) -> bool:
    """A '..' segment in the path or a query value, plain or percent-encoded: Label Studio decodes it once, and an
    HTTP client drops it with the segment before it, so /data/upload/../../api/... would reach the API."""
    parts = urlsplit(url)
    texts = (unquote(parts.path), unquote(parts.query))
    return any(segment == ".." for text in texts for segment in re.split(r"[/\\&=]", text))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ImageFetchError(f"image URL {describe(url)} has an invalid port") from None
    port = port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class ImageCache:
    """LRU of decoded images, bounded by their total bytes; an image larger than the bound is not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.hits = self.misses = 0  # lookups, for /metrics
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:  # not a lookup: counts neither a hit nor a miss
        with self._lock:
            return key in self._items

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return image

    def put(self, key: str, image: np.ndarray) -> None:
        if image.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes -= 0 if old is None else old.nbytes
            self._items[key] = image
            self.bytes += image.nbytes
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes


class ImageFetcher:
    """fetch(uri) -> RGB H x W x 3 uint8 (read-only, shared through the cache) or ImageFetchError."""

    def __init__(self, settings: ImageSettings, session: requests.Session | None = None, s3_client=None):
        self.settings = settings
        self.session = session or requests.Session()
        # No proxies or .netrc from the environment: a .netrc entry would hand credentials to whatever host a
        # task names, and images come from known hosts anyway.
        self.session.trust_env = False
        self.cache = ImageCache(settings.cache_bytes)
        self._s3_client = s3_client
        self._s3_lock = threading.Lock()
        self.ls_origin = _origin(settings.label_studio_url) if settings.label_studio_url else None
        # Label Studio serves task files under <its URL>/data/; nothing else there is fetched with its credentials.
        self.ls_files = (urlsplit(settings.label_studio_url).path.rstrip("/") + "/data/"
                         if settings.label_studio_url else None)
        self.ls_auth = None
        if settings.label_studio_url and settings.label_studio_api_key:
            self.ls_auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, self.session,
                                           timeout_s=settings.timeout_s)

    def fetch(self, uri: str) -> np.ndarray:
        if not isinstance(uri, str) or not uri.strip():
            raise ImageFetchError("the task names no image URL")
        uri = uri.strip()
        image = self.cache.get(uri)
        if image is None:
            image = self.decode(self.fetch_bytes(uri), describe(uri))
            self.cache.put(uri, image)
        return image

    def holds(self, uri) -> bool:
        """Whether fetch(uri) would answer from the cache."""
        return isinstance(uri, str) and uri.strip() in self.cache

    def fetch_bytes(self, uri: str) -> bytes:
        scheme = urlsplit(uri).scheme.lower()
        if scheme == "s3":
            return self._s3(uri)
        if scheme in ("http", "https"):
            return self._http(uri)
        if not scheme and uri.startswith("/data/"):
            if not self.settings.label_studio_url:
                raise ImageFetchError(f"image {describe(uri)} is on Label Studio, but LABEL_STUDIO_URL is not set")
            return self._http(self.settings.label_studio_url + uri)
        raise ImageFetchError(f"image URL {describe(uri)} is not s3://, http(s):// or a Label Studio /data/ path")

    # ------------------------------------------------------------------------------------------------ http

    def _allowed(self, url: str) -> bool:
        scheme, host, port = _origin(url)
        if scheme not in ("http", "https") or not host:
            return False
        if any(ord(ch) < 32 or ord(ch) == 127 or ch in " \\" for ch in url):
            return False  # parsers disagree on such URLs: the host checked might not be the host contacted
        if urlsplit(url).username is not None or (urllib3.util.parse_url(url).host or "").lower() != host:
            return False  # credentials in the URL, or urllib3 (which requests uses) sees another host
        if (scheme, host, port) == self.ls_origin:
            return True
        return host in self.settings.allowed_hosts or f"{host}:{port}" in self.settings.allowed_hosts

    def _http(self, url: str) -> bytes:
        url = url.replace(" ", "%20")  # file names with spaces are common; every other oddity is refused below
        name = describe(url)
        if not self._allowed(url):
            raise ImageFetchError(f"image host of {name} is not allowed (see CLICKMASK_ALLOWED_IMAGE_HOSTS)")
        deadline = time.monotonic() + self.settings.timeout_s
        retried = False
        for _ in range(MAX_REDIRECTS + 1):
            to_ls = _origin(url) == self.ls_origin
            if to_ls and (climbs(url) or not urlsplit(url).path.startswith(self.ls_files)):
                raise ImageFetchError(f"image {name}: only files under Label Studio's /data/, without '..', are "
                                      "fetched from Label Studio")
            try:
                headers = self.ls_auth.headers() if (to_ls and self.ls_auth) else {}
            except LabelStudioAuthError as exc:
                raise ImageFetchError(f"image {name}: {exc}") from None
            try:
                response = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                            timeout=self.settings.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                where = "Label Studio" if to_ls else "the image host"
                raise ImageFetchError(f"image {name}: {where} is unavailable ({type(exc).__name__}); try again "
                                      "later") from None
            except requests.RequestException as exc:
                raise ImageFetchError(f"image {name} could not be fetched ({type(exc).__name__})") from None
            with response:
                if response.status_code in (401, 403) and to_ls and self.ls_auth and not retried:
                    self.ls_auth.invalidate()  # the access token may have expired early: exchange once more
                    retried = True
                    continue
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("Location", ""))
                    if not self._allowed(target):
                        raise ImageFetchError(f"image {name} redirects to a host that is not allowed")
                    url = target
                    continue
                if response.status_code in (401, 403):
                    hint = " (check LABEL_STUDIO_API_KEY)" if to_ls else ""
                    raise ImageFetchError(f"image {name}: access refused, HTTP {response.status_code}{hint}")
                if response.status_code != 200:
                    raise ImageFetchError(f"image {name}: HTTP {response.status_code}")
                return self._read_capped(response, name, deadline)
        raise ImageFetchError(f"image {name}: too many redirects")

    def _read_capped(self, response: requests.Response, name: str, deadline: float) -> bytes:
        limit = self.settings.max_image_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageFetchError(f"image {name} is larger than {limit} bytes")
        data = bytearray()
        try:
            for chunk in response.iter_content(CHUNK):  # counts decoded bytes, so gzip bombs stop too
                data += chunk
                if len(data) > limit:
                    raise ImageFetchError(f"image {name} is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise ImageFetchError(f"image {name} took longer than {self.settings.timeout_s:g} s")
        except requests.RequestException as exc:
            raise ImageFetchError(f"image {name} could not be read ({type(exc).__name__})") from None
        return bytes(data)

    # -------------------------------------------------------------------------------------------------- s3

    def _s3(self, uri: str) -> bytes:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, ReadTimeoutError)

        parts = urlsplit(uri)
        bucket, key, name = parts.netloc.lower(), parts.path.lstrip("/"), describe(uri)
        if not bucket or not key:
            raise ImageFetchError(f"image URL {name} names no bucket and key")
        if bucket not in self.settings.allowed_buckets:
            raise ImageFetchError(f"bucket of {name} is not allowed (see CLICKMASK_ALLOWED_S3_BUCKETS)")
        limit = self.settings.max_image_bytes
        try:
            obj = self._s3_client_get().get_object(Bucket=parts.netloc, Key=key)
            body = obj["Body"]
            with body:
                if obj.get("ContentLength", 0) > limit:
                    raise ImageFetchError(f"image {name} is larger than {limit} bytes")
                data = body.read(limit + 1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ImageFetchError(f"image {name} does not exist") from None
            if status >= 500:
                raise ImageFetchError(f"image {name}: S3 is unavailable ({code}); try again later") from None
            raise ImageFetchError(f"image {name}: S3 answered {code}") from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as exc:
            raise ImageFetchError(f"image {name}: S3 is unavailable ({type(exc).__name__}); try again later") from None
        except BotoCoreError as exc:
            raise ImageFetchError(f"image {name}: S3 not usable ({type(exc).__name__})") from None
        if len(data) > limit:
            raise ImageFetchError(f"image {name} is larger than {limit} bytes")
        return data

    def _s3_client_get(self):
        with self._s3_lock:
            if self._s3_client is None:
                import boto3
                from botocore.config import Config

                # botocore's defaults (60 s to connect, 60 s per read, 5 attempts) would hold a click for minutes
                # when S3 hangs; the fetch's own time limit applies instead.
                timeout = self.settings.timeout_s
                config = Config(connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                                retries={"max_attempts": 2, "mode": "standard"})
                self._s3_client = boto3.session.Session().client("s3", endpoint_url=self.settings.s3_endpoint_url,
                                                                 config=config)
            return self._s3_client

    # ---------------------------------------------------------------------------------------------- decode

    def decode(self, data: bytes, name: str = "image") -> np.ndarray:
        """PNG, JPEG, WebP or BMP bytes -> RGB H x W x 3 uint8; the pixel cap is checked on the header first."""
        size = image_size(data)
        if size is None:
            raise ImageFetchError(f"{name} is not a PNG, JPEG, WebP or BMP image")
        self._check_pixels(*size, name)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise ImageFetchError(f"{name} could not be decoded")
        self._check_pixels(bgr.shape[1], bgr.shape[0], name)  # EXIF rotation may swap sides; the area is the same
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        rgb.setflags(write=False)
        return rgb

    def _check_pixels(self, width: int, height: int, name: str) -> None:
        if width <= 0 or height <= 0:
            raise ImageFetchError(f"{name} has no pixels")
        if width * height > self.settings.max_image_pixels:
            raise ImageFetchError(
                f"{name} is {width}x{height}, over the cap of {self.settings.max_image_pixels} pixels"
            )
