"""Image fetching against real servers: a plain HTTP server on loopback, moto's S3 server, and the harness's real
Label Studio (uploads fetched with a personal access token)."""
from __future__ import annotations

import base64
import json
import time

import boto3
import cv2
import numpy as np
import pytest

from image_server import Site, png_header
from integrations.image_header import image_size
from integrations.images import ImageCache, ImageFetcher, ImageFetchError, ImageSettings

SECRET = "sig-0123456789-secret"


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    """RGB uint8 with distinct channels, so a BGR/RGB swap shows."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 4 % 256, yy * 5 % 256, np.full((h, w), 200)], axis=-1).astype(np.uint8)


def encode(rgb: np.ndarray, ext: str, *params) -> bytes:
    ok, data = cv2.imencode(ext, rgb[:, :, ::-1], list(params))
    assert ok
    return data.tobytes()


# ------------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "ext, params",
    [(".png", ()), (".jpg", ()), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
     (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)), (".bmp", ())],
)
def test_header_size_of_each_format(ext, params):
    assert image_size(encode(picture(37, 91), ext, *params)) == (91, 37)


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a....", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP9 ", b"hello"]
)
def test_header_of_other_or_broken_data(data):
    assert image_size(data) is None


# ---------------------------------------------------------------------------------------------- http server


@pytest.fixture
def site():
    site = Site()
    yield site
    site.close()


def fetcher_for(site: Site, **overrides) -> ImageFetcher:
    settings = dict(allowed_hosts=(f"127.0.0.1:{site.port}",), max_image_bytes=100_000, max_image_pixels=1_000_000)
    settings.update(overrides)
    return ImageFetcher(ImageSettings(**settings))


def test_png_and_jpeg_over_http(site):
    rgb = picture()
    site.routes["/a.png"] = (200, {"Content-Type": "image/png"}, encode(rgb, ".png"))
    site.routes["/b.jpg"] = (200, {"Content-Type": "image/jpeg"}, encode(rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95))
    fetcher = fetcher_for(site)
    png = fetcher.fetch(f"{site.url}/a.png")
    np.testing.assert_array_equal(png, rgb)
    assert png.dtype == np.uint8 and not png.flags.writeable
    jpeg = fetcher.fetch(f"{site.url}/b.jpg")
    assert jpeg.shape == rgb.shape and np.abs(jpeg.astype(int) - rgb).mean() < 4


def test_decoded_images_are_cached(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    fetcher = fetcher_for(site)
    first = fetcher.fetch(f"{site.url}/a.png")
    assert fetcher.fetch(f"{site.url}/a.png") is first
    assert site.hits["/a.png"] == 1 and fetcher.cache.bytes == first.nbytes


def test_host_allowed_by_name_for_any_port(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    assert fetcher_for(site, allowed_hosts=("127.0.0.1",)).fetch(f"{site.url}/a.png").shape == (48, 64, 3)


def test_disallowed_host_is_never_contacted(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    fetcher = fetcher_for(site)
    for url in (f"http://localhost:{site.port}/a.png", f"http://127.0.0.1:{site.port + 1}/a.png", "http://10.0.0.1/x"):
        with pytest.raises(ImageFetchError, match="not allowed"):
            fetcher.fetch(url)
    assert site.hits == {}


def test_urls_that_parsers_read_differently_are_refused(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    fetcher = fetcher_for(site)
    for url in (f"http://127.0.0.1:{site.port}\\@localhost:{site.port}/a.png",
                f"http://user:{SECRET}@127.0.0.1:{site.port}/a.png",
                f"http://127.0.0.1:{site.port}/a.png\r\nX: y",
                f"http://127.0.0.1:{site.port}/a.png\x7f"):
        with pytest.raises(ImageFetchError, match="not allowed") as caught:
            fetcher.fetch(url)
        assert SECRET not in str(caught.value)
    assert site.hits == {}


def test_spaces_in_file_names_are_encoded(site):
    site.routes["/my%20photo.png"] = (200, {}, encode(picture(), ".png"))
    assert fetcher_for(site).fetch(f"{site.url}/my photo.png").shape == (48, 64, 3)


def test_redirect_to_another_host_is_refused(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    site.routes["/away"] = (302, {"Location": f"http://localhost:{site.port}/a.png"}, b"")
    with pytest.raises(ImageFetchError, match="redirects to a host that is not allowed"):
        fetcher_for(site).fetch(f"{site.url}/away")
    assert site.hits == {"/away": 1}


METADATA = ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://2852039166/latest/",
            "http://0xA9FEA9FE/latest/", "http://[::ffff:169.254.169.254]/latest/", "http://[fd00:ec2::254]/latest/",
            "http://metadata.google.internal/computeMetadata/v1/", "http://169.254.169.254.nip.io/latest/"]


@pytest.mark.parametrize("target", METADATA)
def test_cloud_metadata_addresses_are_refused_directly_and_as_redirect_targets(site, target):
    site.routes["/meta"] = (302, {"Location": target}, b"")
    fetcher = fetcher_for(site)
    with pytest.raises(ImageFetchError, match="not allowed"):
        fetcher.fetch(target)
    with pytest.raises(ImageFetchError, match="redirects to a host that is not allowed"):
        fetcher.fetch(f"{site.url}/meta")


@pytest.mark.parametrize("uri", [
    "/data/upload/../../api/projects/", "/data/upload/1/%2e%2e/%2E%2E/%2e%2e/api/projects/",
    "/data/upload/..%2f..%2fapi/projects/", "/data/local-files/?d=../../../etc/passwd",
    "/data/local-files/?d=images/..%2F..%2F..%2Fetc%2Fpasswd", "/data/local-files/?d=images%5C..%5C..%5Csecret.png",
    "{ls}/api/projects/", "{ls}/data/../api/projects/",
])
def test_label_studio_paths_cannot_climb_out_of_data(site, uri):
    """Label Studio is fetched with the backend's credentials: a '..' (even percent-encoded) or a path outside
    /data/ would point them at its API. Refused before anything is sent, the token exchange included."""
    fake_label_studio(site)
    pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=pat))
    with pytest.raises(ImageFetchError, match="only files under Label Studio's /data/") as caught:
        fetcher.fetch(uri.format(ls=site.url))
    assert pat not in str(caught.value)
    assert site.hits == {}


def test_label_studio_redirecting_outside_data_is_refused_and_files_inside_are_fetched(site):
    issued = fake_label_studio(site)
    site.routes["/data/upload/moved.png"] = (302, {"Location": "/api/projects/"}, b"")
    site.routes["/data/local-files/"] = lambda handler: (
        (200, {}, encode(picture(), ".png")) if handler.headers.get("Authorization") == f"Bearer {issued[-1]}"
        else (401, {}, b""))
    pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=pat))
    with pytest.raises(ImageFetchError, match="only files under Label Studio's /data/"):
        fetcher.fetch("/data/upload/moved.png")
    assert "/api/projects/" not in site.hits
    assert fetcher.fetch("/data/local-files/?d=images/cats/a.png").shape == (48, 64, 3)
    assert fetcher.fetch("/data/upload/a.png").shape == (48, 64, 3)


def test_redirect_on_the_same_host_is_followed_and_loops_end(site):
    site.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
    site.routes["/moved"] = (301, {"Location": "/a.png"}, b"")
    site.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    fetcher = fetcher_for(site)
    assert fetcher.fetch(f"{site.url}/moved").shape == (48, 64, 3)
    with pytest.raises(ImageFetchError, match="too many redirects"):
        fetcher.fetch(f"{site.url}/loop")


def test_oversize_bodies_are_refused(site):
    big = encode(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8), ".png")
    assert len(big) > 100_000
    site.routes["/declared"] = (200, {}, big)
    site.routes["/undeclared"] = (200, {"X-No-Length": "1", "Connection": "close"}, big)
    fetcher = fetcher_for(site)
    for path in ("/declared", "/undeclared"):
        with pytest.raises(ImageFetchError, match="larger than 100000 bytes"):
            fetcher.fetch(site.url + path)


def test_non_images_and_broken_images_are_refused(site):
    site.routes["/page"] = (200, {"Content-Type": "text/html"}, b"<html>hello</html>")
    site.routes["/broken.png"] = (200, {}, encode(picture(), ".png")[:60])
    site.routes["/gif"] = (200, {}, b"GIF89a" + b"\0" * 100)
    fetcher = fetcher_for(site)
    with pytest.raises(ImageFetchError, match="is not a PNG, JPEG, WebP or BMP image"):
        fetcher.fetch(f"{site.url}/page")
    with pytest.raises(ImageFetchError, match="could not be decoded"):
        fetcher.fetch(f"{site.url}/broken.png")
    with pytest.raises(ImageFetchError, match="is not a PNG"):
        fetcher.fetch(f"{site.url}/gif")


def test_pixel_cap_is_checked_on_the_header_before_decoding(site):
    # A small file declaring 50000 x 50000 pixels: refused for its size, not for being undecodable.
    site.routes["/bomb.png"] = (200, {}, png_header(50_000, 50_000))
    # And a real, well-compressed 1200 x 1000 image over a cap of 1 M pixels.
    site.routes["/large.png"] = (200, {}, encode(np.zeros((1000, 1200, 3), np.uint8), ".png"))
    fetcher = fetcher_for(site)
    with pytest.raises(ImageFetchError, match="50000x50000, over the cap of 1000000 pixels"):
        fetcher.fetch(f"{site.url}/bomb.png")
    with pytest.raises(ImageFetchError, match="1200x1000, over the cap"):
        fetcher.fetch(f"{site.url}/large.png")


def test_http_errors_name_the_image_without_its_query(site):
    with pytest.raises(ImageFetchError, match="HTTP 404") as caught:
        fetcher_for(site).fetch(f"{site.url}/missing.png?X-Amz-Signature={SECRET}")
    assert SECRET not in str(caught.value) and "/missing.png" in str(caught.value)


def test_unreachable_host_is_a_clear_error():
    port = Site()  # bind and release a port, so nothing listens there
    port.close()
    fetcher = ImageFetcher(ImageSettings(allowed_hosts=("127.0.0.1",), timeout_s=2))
    with pytest.raises(ImageFetchError, match=r"the image host is unavailable \(ConnectionError\); try again later"):
        fetcher.fetch(f"{port.url}/a.png")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("file:///etc/passwd", "is not s3://, http"),
        ("ftp://127.0.0.1/a.png", "is not s3://, http"),
        ("data:image/png;base64,AAAA", "is not s3://, http"),
        ("images/a.png", "is not s3://, http"),
        ("/data/upload/1/a.png", "LABEL_STUDIO_URL is not set"),
        ("", "no image URL"),
        ("http://127.0.0.1:99999/a.png", "invalid port"),
    ],
)
def test_unsupported_uris(uri, message):
    with pytest.raises(ImageFetchError, match=message):
        ImageFetcher(ImageSettings(allowed_hosts=("127.0.0.1",))).fetch(uri)


# ------------------------------------------------------------------------------------ Label Studio auth (fake)


def jwt(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def fake_label_studio(site: Site, lifetime: int = 300, accept_legacy: str | None = None):
    """/api/token/refresh/ exchanges a JWT for numbered access tokens; /data/upload/a.png needs the latest one."""
    issued: list[str] = []

    def refresh(handler):
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        if not body["refresh"].count(".") == 2:
            return 401, {}, b'{"detail": "Token is invalid"}'
        now = int(time.time())
        issued.append(jwt({"token_type": "access", "iat": now, "exp": now + lifetime, "n": len(issued)}))
        return 200, {"Content-Type": "application/json"}, json.dumps({"access": issued[-1]}).encode()

    def upload(handler):
        auth = handler.headers.get("Authorization", "")
        if (issued and auth == f"Bearer {issued[-1]}") or (accept_legacy and auth == f"Token {accept_legacy}"):
            return 200, {}, encode(picture(), ".png")
        return 401, {}, b'{"detail": "Authentication credentials were not provided."}'

    site.routes["/api/token/refresh/"] = refresh
    site.routes["/data/upload/a.png"] = upload
    return issued


def test_pat_exchanged_once_and_again_after_a_401(site):
    issued = fake_label_studio(site)
    pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=pat, cache_bytes=1))
    fetcher.fetch("/data/upload/a.png")
    fetcher.fetch("/data/upload/a.png")  # cache too small to keep it: fetched again, same access token
    assert len(issued) == 1 and site.hits["/data/upload/a.png"] == 2
    issued.append("revoked-elsewhere")  # the server now wants a newer token: a 401, one new exchange, success
    assert fetcher.fetch("/data/upload/a.png").shape == (48, 64, 3)
    assert len(issued) == 3 and site.hits["/api/token/refresh/"] == 2


def test_short_lived_access_token_is_renewed_before_it_expires(site):
    issued = fake_label_studio(site, lifetime=30)  # less than the renewal margin: every use renews
    pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=pat, cache_bytes=1))
    for _ in range(3):
        fetcher.fetch("/data/upload/a.png")
    assert len(issued) == 3 and site.hits["/data/upload/a.png"] == 3  # no 401 round trips


def test_legacy_token_when_the_key_is_no_jwt(site):
    fake_label_studio(site, accept_legacy="abc123legacy")
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key="abc123legacy"))
    assert fetcher.fetch("/data/upload/a.png").shape == (48, 64, 3)
    assert "/api/token/refresh/" not in site.hits


def test_refused_key_is_a_clear_error_without_the_key(site):
    fake_label_studio(site)
    key = jwt({"token_type": "refresh", "exp": time.time() + 3600}).replace(".", "-", 1) + ".x.y"  # JWT-shaped, refused
    fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=key))
    with pytest.raises(ImageFetchError, match="access refused, HTTP 401 \\(check LABEL_STUDIO_API_KEY\\)") as caught:
        fetcher.fetch("/data/upload/a.png")
    assert key not in str(caught.value)
    assert site.headers[-1]["Authorization"] == f"Token {key}"  # the exchange refused it: legacy tried last


def test_credentials_go_only_to_label_studio(site):
    fake_label_studio(site)
    other = Site()
    try:
        other.routes["/a.png"] = (200, {}, encode(picture(), ".png"))
        pat = jwt({"token_type": "refresh", "exp": time.time() + 3600})
        fetcher = ImageFetcher(ImageSettings(label_studio_url=site.url, label_studio_api_key=pat,
                                             allowed_hosts=(f"127.0.0.1:{other.port}",)))
        fetcher.fetch(f"{other.url}/a.png")
        assert "Authorization" not in other.headers[0]
    finally:
        other.close()


# ------------------------------------------------------------------------------------------------------- S3


def test_s3_through_moto(moto_endpoint, s3_bucket):
    rgb = picture()
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.put_object(Bucket=s3_bucket, Key="imgs/a.png", Body=encode(rgb, ".png"))
    client.put_object(Bucket=s3_bucket, Key="imgs/big.bin", Body=b"\0" * 5000)
    fetcher = ImageFetcher(ImageSettings(allowed_buckets=(s3_bucket,), s3_endpoint_url=moto_endpoint,
                                         max_image_bytes=4000))
    np.testing.assert_array_equal(fetcher.fetch(f"s3://{s3_bucket}/imgs/a.png"), rgb)
    with pytest.raises(ImageFetchError, match="does not exist"):
        fetcher.fetch(f"s3://{s3_bucket}/imgs/missing.png")
    with pytest.raises(ImageFetchError, match="larger than 4000 bytes"):
        fetcher.fetch(f"s3://{s3_bucket}/imgs/big.bin")
    with pytest.raises(ImageFetchError, match="not allowed"):
        fetcher.fetch("s3://some-other-bucket/imgs/a.png")
    with pytest.raises(ImageFetchError, match="names no bucket and key"):
        fetcher.fetch(f"s3://{s3_bucket}/")


def test_s3_unreachable_is_a_clear_error(aws_env):
    closed = Site()
    closed.close()
    fetcher = ImageFetcher(ImageSettings(allowed_buckets=("b",), s3_endpoint_url=closed.url))
    with pytest.raises(ImageFetchError, match=r"S3 is unavailable \(EndpointConnectionError\); try again later"):
        fetcher.fetch("s3://b/a.png")


# ----------------------------------------------------------------------------------------- cache, settings


def test_cache_evicts_least_recently_used_by_bytes():
    cache = ImageCache(max_bytes=300)
    images = {name: np.zeros(100, np.uint8) for name in "abcd"}
    for name in "abc":
        cache.put(name, images[name])
    assert cache.get("a") is images["a"]  # "a" is now the most recent
    cache.put("d", images["d"])
    assert cache.get("b") is None and len(cache) == 3 and cache.bytes == 300
    cache.put("huge", np.zeros(301, np.uint8))
    assert cache.get("huge") is None and cache.bytes == 300


def test_settings_from_env():
    settings = ImageSettings.from_env({
        "LABEL_STUDIO_URL": "http://ls.internal:8080/", "LABEL_STUDIO_API_KEY": "k" * 40,
        "CLICKMASK_ALLOWED_IMAGE_HOSTS": " Images.Example.com, cdn.example.com:8443 ,",
        "CLICKMASK_ALLOWED_S3_BUCKETS": "data,Raw", "CLICKMASK_S3_ENDPOINT_URL": "http://minio:9000",
        "CLICKMASK_MAX_IMAGE_BYTES": "1000", "CLICKMASK_MAX_IMAGE_PIXELS": "2000", "CLICKMASK_IMAGE_CACHE_MB": "1.5",
        "CLICKMASK_IMAGE_TIMEOUT_S": "5",
    })
    assert settings.label_studio_url == "http://ls.internal:8080"
    assert settings.allowed_hosts == ("images.example.com", "cdn.example.com:8443")
    assert settings.allowed_buckets == ("data", "raw") and settings.s3_endpoint_url == "http://minio:9000"
    assert (settings.max_image_bytes, settings.max_image_pixels, settings.cache_bytes) == (1000, 2000, 1572864)
    assert "k" * 40 not in repr(settings)
    assert ImageSettings.from_env({}) == ImageSettings()
    for bad in ({"CLICKMASK_MAX_IMAGE_BYTES": "lots"}, {"CLICKMASK_IMAGE_CACHE_MB": "0"},
                {"LABEL_STUDIO_URL": "ftp://x"}):
        with pytest.raises(ValueError):
            ImageSettings.from_env(bad)


# ------------------------------------------------------------------------------------------ real Label Studio


def test_upload_fetched_from_label_studio_with_the_pat(label_studio, ls_project):
    from ls_support import eval_images

    _, tasks = ls_project
    uri = tasks[0]["data"]["image"]
    assert uri.startswith("/data/upload/")
    fetcher = ImageFetcher(ImageSettings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.pat))
    assert not fetcher.ls_auth.legacy
    image = fetcher.fetch(uri)
    expected = cv2.imread(str(eval_images(1)[0]), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(image, expected)

    with pytest.raises(ImageFetchError, match="access refused, HTTP 401"):
        ImageFetcher(ImageSettings(label_studio_url=label_studio.url)).fetch(uri)
    revoked = jwt({"token_type": "refresh", "exp": time.time() + 3600})
    with pytest.raises(ImageFetchError, match="access refused") as caught:
        ImageFetcher(ImageSettings(label_studio_url=label_studio.url, label_studio_api_key=revoked)).fetch(uri)
    assert revoked not in str(caught.value)
