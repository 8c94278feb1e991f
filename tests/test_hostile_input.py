"""Hostile requests against the served backend: the ingress and a model replica on the run's real Ray Serve, images
from a loopback HTTP server, a stand-in Label Studio that refuses the backend's key, clicks and webhooks recorded in
PostgreSQL through a URL that carries a password, and Basic auth on. Each test sends what an attacker (or a broken
client) might, checks the answer is a clear error, then checks that the service still answers a normal click and that
nothing stored was lost. The last test reads every log file of the Ray session and every answer given for secrets.

orchestrator/serving/HOSTILE_INPUT.md lists every input tried here and in the component tests, with the answer."""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from image_server import Site, jpeg_header, png_header
from model_support import disk_scene

W, H = 320, 240
USER, PASSWORD = "annotator", "hostile-pw-5f0c2a9e"
DB_PASSWORD = "db-pw-77d1c0b3"
# JWT-shaped, so the backend tries the token exchange with it before falling back to a legacy token.
API_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.ls-key-9b8e71d4"
SECRETS = (PASSWORD, DB_PASSWORD, API_KEY)
MAX_BODY = 1 << 20
answers: list[str] = []  # every response body seen, checked for secrets at the end


@pytest.fixture(scope="module")
def hostile(serve_http, postgres_database):
    from alembic import command
    from ray import serve
    from sqlalchemy import create_engine

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.serving.app import ServeConfig, build_app
    from store_support import create_schema, drop_schema

    rgb, _ = disk_scene(h=H, w=W, cx=150, cy=120, r=50)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    studio = Site()  # refuses every key: the exchange answers 401, and so does every file
    studio.routes["/api/token/refresh/"] = (401, {}, b'{"detail": "Token is invalid"}')
    for name in ("a.png", "secret.png"):
        studio.routes[f"/data/upload/1/{name}"] = (401, {}, b'{"detail": "not authenticated"}')
    images = Site()
    images.routes.update({
        "/disk.png": (200, {}, png.tobytes()),
        "/bomb.png": (200, {}, png_header(100_000, 100_000) + b"\0" * 64),  # 10 gigapixels declared
        "/bomb.jpg": (200, {}, jpeg_header(65_000, 65_000)),
        "/page.png": (200, {"Content-Type": "text/html"}, b"<html><body>not an image</body></html>"),
        "/elf.png": (200, {}, b"\x7fELF" + bytes(200)),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/iam/"}, b""),
        "/to-label-studio-api": (302, {"Location": f"{studio.url}/api/projects/"}, b""),
        "/to-elsewhere": (302, {"Location": "http://127.0.0.1:1/a.png"}, b""),
    })
    schema = create_schema(postgres_database)
    db_url = schema.set(password=DB_PASSWORD).render_as_string(hide_password=False)
    command.upgrade(alembic_config(db_url), "head")
    settings = ImageSettings(allowed_hosts=(f"127.0.0.1:{images.port}",), label_studio_url=studio.url,
                             label_studio_api_key=API_KEY)
    config = ServeConfig(checkpoint="base", model_version="base", images=settings, database_url=db_url,
                         cpus_per_replica=0, basic_auth=(USER, PASSWORD), max_body_bytes=MAX_BODY)
    serve.run(build_app(config), name="hostile", route_prefix="/hostile")
    engine = create_engine(db_url)
    yield {"url": serve_http + "/hostile", "images": images, "studio": studio, "engine": engine}
    serve.delete("hostile")
    engine.dispose()
    images.close()
    studio.close()
    drop_schema(schema)


def post(hostile, path: str, auth=(USER, PASSWORD), **kwargs) -> requests.Response:
    response = requests.post(hostile["url"] + path, auth=auth, timeout=120, **kwargs)
    answers.append(response.text)
    return response


def click_body(ls_request, image: str, x: float = 46.9, y: float = 50.0, size=(W, H), region="r0") -> dict:
    body = ls_request("predict_interactive_positive_keypoint")
    body["tasks"][0]["data"]["image"] = image
    (point,) = body["params"]["context"]["result"]
    point.update(id=region, original_width=size[0], original_height=size[1])
    point["value"].update(x=x, y=y)
    return body


def interactive_errors(response: requests.Response) -> list[str]:
    """An interactive error as Label Studio passes it on: HTTP 200, the messages in results[0].errors."""
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert "Traceback" not in response.text
    (first,) = answer["results"]
    assert first["result"] == [] and first["errors"], answer
    return first["errors"]


def assert_still_serving(hostile, ls_request) -> None:
    """A normal click on a normal image is answered with a mask at the image's size."""
    response = post(hostile, "/predict", json=click_body(ls_request, hostile["images"].url + "/disk.png",
                                                         region=f"ok{time.monotonic_ns()}"))
    assert response.status_code == 200 and "errors" not in response.json(), response.text[:300]
    (region,) = response.json()["results"][0]["result"]
    assert decode_rle(region["value"]["rle"]).reshape(H, W, 4)[:, :, 3].any()


# ------------------------------------------------------------------------------------------------ bodies


def test_oversize_nested_and_non_json_bodies_are_400_and_serving_goes_on(hostile, ls_request):
    assert_still_serving(hostile, ls_request)
    bodies = {
        "larger than": b"{" + b" " * MAX_BODY + b"}",
        "not valid JSON": b"[" * 100_000 + b"]" * 100_000,
        "not valid JSON ": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "must be a JSON object": b"[1, 2, 3]",
        "not valid JSON  ": bytes(range(256)),
    }
    for path in ("/predict", "/setup", "/webhook"):
        for expected, raw in bodies.items():
            response = post(hostile, path, data=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, expected, response.text[:200])
            assert expected.strip() in response.json()["errors"][0] and "Traceback" not in response.text
    assert_still_serving(hostile, ls_request)


@pytest.mark.parametrize("size, expected", [
    ((-5, H), "original_width = -5 is not between"),
    ((W, 0), "original_height = 0 is not between"),
    ((10**12, H), "not between 1 and"),
    ((100_000, 100_000), "over the cap of 50000000 pixels"),  # each side allowed, the area 10 gigapixels
    ((8_000, 8_000), "over the cap of 50000000 pixels"),
])
def test_huge_or_negative_image_sizes_are_refused(hostile, ls_request, size, expected):
    response = post(hostile, "/predict", json=click_body(ls_request, hostile["images"].url + "/disk.png", size=size))
    errors = response.json()["errors"] if response.status_code == 400 else interactive_errors(response)
    assert expected in " ".join(errors)
    assert_still_serving(hostile, ls_request)


# ------------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("path, expected", [
    ("/bomb.png", "is 100000x100000, over the cap of 50000000 pixels"),
    ("/bomb.jpg", "is 65000x65000, over the cap of 50000000 pixels"),
    ("/page.png", "is not a PNG, JPEG, WebP or BMP image"),
    ("/elf.png", "is not a PNG, JPEG, WebP or BMP image"),
    ("/to-metadata", "redirects to a host that is not allowed"),
    ("/to-label-studio-api", "only files under Label Studio's /data/"),
    ("/to-elsewhere", "redirects to a host that is not allowed"),
])
def test_bombs_non_images_and_redirects_out_are_refused(hostile, ls_request, path, expected):
    response = post(hostile, "/predict", json=click_body(ls_request, hostile["images"].url + path,
                                                         region=f"img{path}"))
    assert expected in " ".join(interactive_errors(response))
    assert_still_serving(hostile, ls_request)


@pytest.mark.parametrize("uri, expected", [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "not allowed"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "not allowed"),
    ("http://metadata.google.internal/computeMetadata/v1/", "not allowed"),
    ("http://127.0.0.1:1/admin.png", "not allowed"),
    ("/data/upload/../../api/projects/", "only files under Label Studio's /data/"),
    ("/data/upload/1/%2e%2e/%2e%2e/%2e%2e/api/current-user/whoami", "only files under Label Studio's /data/"),
    ("/data/local-files/?d=../../../../etc/passwd", "only files under Label Studio's /data/"),
    ("file:///etc/passwd", "is not s3://, http(s)://"),
    ("s3://somebody-elses-bucket/a.png", "is not allowed"),
    ("/data/upload/1/a.png", "access refused, HTTP 401 (check LABEL_STUDIO_API_KEY)"),
])
def test_urls_to_hosts_and_paths_not_allowed_are_refused(hostile, ls_request, uri, expected):
    response = post(hostile, "/predict", json=click_body(ls_request, uri, region=f"url{len(answers)}"))
    assert expected in " ".join(interactive_errors(response))
    # Label Studio saw nothing but the token exchange and its /data/ files.
    assert set(hostile["studio"].hits) <= {"/api/token/refresh/", "/data/upload/1/a.png"}
    assert_still_serving(hostile, ls_request)


# ---------------------------------------------------------------------------------------------- webhooks


def stored(hostile, ids) -> tuple[int, int]:
    from sqlalchemy import text

    with hostile["engine"].connect() as connection:
        annotations = connection.execute(text("select count(*) from annotations where ls_annotation_id = any(:ids)"),
                                         {"ids": list(ids)}).scalar()
        masks = connection.execute(text(
            "select count(*) from annotation_masks m join annotations a on m.annotation_id = a.id "
            "where a.ls_annotation_id = any(:ids)"), {"ids": list(ids)}).scalar()
    return annotations, masks


def wide(width: int, height: int) -> list[int]:
    """Brush RLE with the right header whose first run holds a 32-bit value, more than the byte it fills."""
    bits = format(width * height * 4, "032b") + "11111" + "0000" * 4 + "1" + "00" + "1" + "1" * 32
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def annotation_event(ls_request, annotation_id: int) -> dict:
    body = ls_request("webhook_annotation_created")
    body["annotation"]["id"] = annotation_id
    return body


def test_rle_beyond_the_image_and_ids_beyond_64_bits_are_rejected_and_store_nothing(hostile, ls_request):
    base = annotation_event(ls_request, 7001)
    rle = base["annotation"]["result"][0]["value"]["rle"]
    longer = list((401 * 300 * 4).to_bytes(4, "big")) + rle[4:]  # decodes to more values than the image holds
    cases = {"RLE covers": ("rle", longer), "cannot be decoded": ("rle", rle[:40]),
             "integers from 0 to 255": ("rle", [300] * 40), "words do not fit a byte": ("rle", wide(400, 300))}
    for expected, (key, value) in cases.items():
        body = copy.deepcopy(base)
        body["annotation"]["result"][0]["value"][key] = value
        response = post(hostile, "/webhook", json=body)
        assert response.status_code == 200 and response.json()["status"] == "rejected", response.text[:300]
        assert expected.strip() in response.json()["reason"]
    for where in ("annotation", "project"):
        body = copy.deepcopy(base)
        body[where]["id"] = 2**70
        response = post(hostile, "/webhook", json=body)
        assert response.status_code == 200 and response.json()["status"] == "rejected", response.text[:300]
    training = post(hostile, "/webhook", json={"action": "START_TRAINING", "project": {"id": 2**70}})
    assert training.status_code == 400 and "names no project" in training.json()["errors"][0]
    assert stored(hostile, [7001]) == (0, 0)
    assert post(hostile, "/webhook", json=base).json()["status"] == "applied"
    assert stored(hostile, [7001]) == (1, 1)
    assert_still_serving(hostile, ls_request)


def test_a_webhook_flood_is_answered_and_stored_once_each(hostile, ls_request):
    """400 deliveries from 16 senders at once: every event twice, as a retrying sender would. Each is answered,
    each annotation is stored exactly once, and a click during the flood is answered too."""
    ids = range(8000, 8200)
    deliveries = [annotation_event(ls_request, i) for i in ids for _ in range(2)]
    with ThreadPoolExecutor(16) as pool:
        flood = list(pool.map(lambda body: requests.post(hostile["url"] + "/webhook", json=body,
                                                         auth=(USER, PASSWORD), timeout=120), deliveries))
        assert_still_serving(hostile, ls_request)
    assert [r.status_code for r in flood] == [200] * len(deliveries)
    statuses = [r.json()["status"] for r in flood]
    assert statuses.count("applied") == len(ids) and statuses.count("ignored") == len(ids)
    assert stored(hostile, ids) == (len(ids), len(ids))
    assert_still_serving(hostile, ls_request)


# -------------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook"])
def test_wrong_or_missing_basic_auth_is_401_on_every_endpoint(hostile, ls_request, path):
    import base64

    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    headers = [{}, {"Authorization": basic(f"{USER}:wrong")}, {"Authorization": basic(f"intruder:{PASSWORD}")},
               {"Authorization": basic(f"{USER}:{PASSWORD.upper()}")}, {"Authorization": basic(PASSWORD)},
               {"Authorization": "Basic !!!not-base64!!!"}, {"Authorization": f"Bearer {PASSWORD}"},
               {"Authorization": basic(f"{USER}:{PASSWORD} ")}, {"Authorization": basic(f" {USER}:{PASSWORD}")},
               {"Authorization": basic(f"{USER}:{PASSWORD}")[:-2]}, {"Authorization": "Basic " + "A" * 6000},
               {"Authorization": "Basic"}, {"Authorization": basic(f"{USER}:{PASSWORD}") + " x"}]
    body = click_body(ls_request, hostile["images"].url + "/disk.png")
    for header in headers:
        response = post(hostile, path, auth=None, json=body, headers=header)
        assert response.status_code == 401, (header, response.text[:200])
        assert response.json() == {"errors": ["authentication required"]}
    # Whitespace around the field value is optional in HTTP, not part of the credentials.
    padded = {"Authorization": basic(f"{USER}:{PASSWORD}") + " \t"}
    assert post(hostile, path, auth=None, json=body, headers=padded).status_code != 401
    for method, open_path in (("GET", "/versions"), ("GET", "/metrics")):
        response = requests.request(method, hostile["url"] + open_path, timeout=30)
        answers.append(response.text)
        assert response.status_code == 401
    assert requests.get(hostile["url"] + "/health", timeout=30).status_code == 200
    assert_still_serving(hostile, ls_request)


# ----------------------------------------------------------------------------------------------- secrets


def test_no_secret_in_any_answer_or_log_of_the_served_backend(hostile, ls_request):
    """Every answer of this module (it runs last, in file order) and every log file of the Ray session, after the
    backend has refused the Label Studio key, failed logins, bad images and bad webhooks here and above."""
    import ray

    refused = post(hostile, "/predict", json=click_body(ls_request, "/data/upload/1/secret.png", region="key"))
    assert "check LABEL_STUDIO_API_KEY" in " ".join(interactive_errors(refused))
    assert post(hostile, "/predict", auth=(USER, "wrong"), json={}).status_code == 401
    assert post(hostile, "/setup", data=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    bad = annotation_event(ls_request, 9001)
    bad["annotation"]["result"][0]["value"]["rle"] = wide(400, 300)
    assert post(hostile, "/webhook", json=bad).json()["status"] == "rejected"
    for text in answers:
        for secret in SECRETS:
            assert secret not in text
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    files = {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
    # The scan reaches the backend's own log lines (the rejected webhooks above were logged as warnings).
    assert any(b"webhook ANNOTATION_CREATED rejected" in data for data in files.values())
    for path, data in files.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:6]}... in {path.name}"
