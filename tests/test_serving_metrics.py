"""/metrics and /dashboard of the backend on a real local Ray Serve (small untrained model, images from a real HTTP
server on loopback, clicks recorded in a real SQLite file), behind Basic auth."""
from __future__ import annotations

import time

import cv2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from finetune_support import predict_body, tiny_checkpoint
from image_server import ImageServer
from model_support import disk_scene

W, H = 160, 120
AUTH = ("viewer", "m3trics")
PROJECT = 41


@pytest.fixture(scope="module")
def backend(serve_http, tmp_path_factory):
    from alembic import command
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("metrics")
    rgb, _ = disk_scene(h=H, w=W, cx=80, cy=60, r=30)
    cv2.imwrite(str(root / "disk.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (root / "junk.png").write_bytes(b"not an image at all")
    images = ImageServer(root)
    db_url = f"sqlite:///{root / 'clicks.db'}"
    command.upgrade(alembic_config(db_url), "head")
    config = ServeConfig(checkpoint=str(tiny_checkpoint(root / "tiny.pt")), model_version="tiny-m", cpus_per_replica=0,
                         images=ImageSettings(allowed_hosts=(images.host,)), database_url=db_url, basic_auth=AUTH)
    serve.run(build_app(config), name="metrics", route_prefix="/metrics-app")
    yield {"url": serve_http + "/metrics-app", "images": images, "db_url": db_url}
    serve.delete("metrics")
    images.stop()


def samples(url: str) -> dict[tuple, float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    reply = requests.get(url + "/metrics", auth=AUTH, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_clicks(db_url: str, count: int) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    deadline = time.monotonic() + 60  # the recorder writes off the request path
    while time.monotonic() < deadline:
        with engine.connect() as c:
            if c.execute(text("select count(*) from clicks")).scalar() >= count:
                break
        time.sleep(0.3)
    engine.dispose()


def test_metrics_count_clicks_errors_latency_caches_replica_versions_and_jobs(backend, ls_request):
    url, image = backend["url"], backend["images"].url("disk.png")
    before = samples(url)
    template = ls_request("predict_interactive_pos_neg_keypoints")
    for clicks in ([(50.0, 50.0, True)], [(50.0, 50.0, True), (90.0, 10.0, False)]):
        reply = requests.post(url + "/predict", json=predict_body(template, image, (W, H), clicks, PROJECT),
                              auth=AUTH, timeout=120)
        assert "errors" not in reply.json(), reply.text[:300]
    junk = predict_body(template, backend["images"].url("junk.png"), (W, H), [(50.0, 50.0, True)], PROJECT, "j")
    assert requests.post(url + "/predict", json=junk, auth=AUTH, timeout=60).json()["errors"]
    broken = requests.post(url + "/predict", data=b'{"tasks": [', auth=AUTH, timeout=30,
                           headers={"content-type": "application/json"})
    assert broken.status_code == 400
    assert requests.post(url + "/predict", json={}, timeout=30).status_code == 401
    training = ls_request("webhook_start_training")
    training["project"]["id"] = PROJECT
    assert requests.post(url + "/webhook", json=training, auth=AUTH, timeout=30).json()["status"] == "queued"

    after = samples(url)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert grew("clickmask_clicks_total", model_version="tiny-m") == 2
    assert grew("clickmask_click_latency_seconds_count") == 2
    assert grew("clickmask_click_latency_seconds_bucket", le="+Inf") == 2
    assert grew("clickmask_request_seconds_count", endpoint="predict") == 5
    # The model's own time, for the two answered requests: less than theirs, counted once each.
    assert grew("clickmask_model_seconds_count") == 2
    assert 0 < grew("clickmask_model_seconds_sum") < grew("clickmask_click_latency_seconds_sum")
    assert grew("clickmask_errors_total", endpoint="predict", kind="ImageFetchError") == 1
    assert grew("clickmask_errors_total", endpoint="predict", kind="bad request") == 1
    assert grew("clickmask_errors_total", endpoint="predict", kind="unauthorized") == 1
    # The image went with the first click, new to this ingress; the replica held it from then on (the junk image
    # failed before any replica was asked).
    assert grew("clickmask_replica_image_lookups_total", result="hit") == 1
    assert grew("clickmask_replica_image_lookups_total", result="miss") == 1
    assert grew("clickmask_image_cache_lookups_total", result="miss") >= 1
    replicas = [dict(labels) for (name, labels), v in after.items()
                if name == "clickmask_replica_model_version" and v == 1 and dict(labels)["project"] == str(PROJECT)]
    assert len(replicas) == 1 and replicas[0]["model_version"] == "tiny-m" and replicas[0]["replica"] != "unknown"
    assert value(after, "clickmask_finetune_jobs", state="queued") == 1
    assert value(after, "clickmask_database_up") == 1
    wait_for_clicks(backend["db_url"], 2)
    assert value(samples(url), "clickmask_clicks_recorded_total") >= 2


def test_opening_a_task_hands_its_image_to_a_replica_before_the_first_click(backend, ls_request):
    url, server = backend["url"], backend["images"]
    for name in ("opened.png", "listed-1.png", "listed-2.png"):
        (server.root / name).write_bytes((server.root / "disk.png").read_bytes())
    batch = ls_request("predict_batch_2_tasks")
    batch["project"] = f"{PROJECT}.1795586130"
    listed = [server.url("listed-1.png"), server.url("listed-2.png")]
    for task, image in zip(batch["tasks"], listed):
        task["data"]["image"] = image
    one_task = lambda image: {**batch, "tasks": [{**batch["tasks"][0], "data": {"image": image}}]}  # noqa: E731
    elsewhere = ImageServer(server.root)  # a host the backend is not allowed to fetch from
    model = serve.get_deployment_handle("ClickModel", app_name="metrics")
    held = lambda: model.stats.remote().result()["images"]  # noqa: E731
    before, images_before = samples(url), held()
    # A page of tasks listed, a task whose image may not be fetched opened, then a task opened.
    for body in (batch, one_task(elsewhere.url("disk.png")), one_task(server.url("opened.png"))):
        reply = requests.post(url + "/predict", json=body, auth=AUTH, timeout=60)
        assert reply.status_code == 200 and all(r["result"] == [] for r in reply.json()["results"])
    deadline = time.monotonic() + 30
    while held() == images_before and time.monotonic() < deadline:  # warmed in the background
        time.sleep(0.1)
    assert held() == images_before + 1
    click = predict_body(ls_request("predict_interactive_positive_keypoint"), server.url("opened.png"), (W, H),
                         [(50.0, 50.0, True)], PROJECT, "opened")
    assert "errors" not in requests.post(url + "/predict", json=click, auth=AUTH, timeout=120).json()

    after = samples(url)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert server.hits.get("/opened.png") == 1  # fetched once, when the task was opened
    assert "/listed-1.png" not in server.hits and "/listed-2.png" not in server.hits
    assert elsewhere.hits == {}  # never contacted
    elsewhere.stop()
    assert grew("clickmask_replica_image_lookups_total", result="hit") == 1  # the click went without the image
    assert grew("clickmask_replica_image_lookups_total", result="miss") == 0


def test_dashboard_is_behind_auth_and_draws_what_the_backend_recorded(backend, ls_request):
    url = backend["url"]
    template = ls_request("predict_interactive_pos_neg_keypoints")
    body = predict_body(template, backend["images"].url("disk.png"), (W, H), [(45.0, 50.0, True)], PROJECT, "d")
    assert "errors" not in requests.post(url + "/predict", json=body, auth=AUTH, timeout=120).json()
    wait_for_clicks(backend["db_url"], 1)

    assert requests.get(url + "/dashboard", timeout=30).status_code == 401
    index = requests.get(url + "/dashboard", auth=AUTH, timeout=60)
    assert index.status_code == 200 and f'href="?project={PROJECT}"' in index.text
    page = requests.get(url + "/dashboard", params={"project": PROJECT}, auth=AUTH, timeout=120)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all
    for chart in ("clicks-over-time", "clicks-by-version", "latency"):
        assert f'<figure id="chart-{chart}"><img src="data:image/png;base64,' in page.text
    assert "No submitted annotation recorded yet" in page.text  # nothing submitted in this project
    missing = requests.get(url + "/dashboard", params={"project": 999}, auth=AUTH, timeout=60)
    assert missing.status_code == 404 and "The database has no project 999" in missing.text
    assert requests.get(url + "/dashboard", params={"project": "1; drop"}, auth=AUTH, timeout=30).status_code == 400


def test_several_ingress_replicas_answer_with_every_ingress_figures(serve_http, tmp_path_factory, ls_request):
    """A scrape reaches one ingress; it answers for all of them, each series labelled with its ingress."""
    from alembic import command
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("metrics-fleet")
    rgb, _ = disk_scene(h=H, w=W, cx=80, cy=60, r=30)
    cv2.imwrite(str(root / "disk.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    images = ImageServer(root)
    db_url = f"sqlite:///{root / 'clicks.db'}"
    command.upgrade(alembic_config(db_url), "head")
    config = ServeConfig(checkpoint=str(tiny_checkpoint(root / "tiny.pt")), model_version="tiny-f", cpus_per_replica=0,
                         images=ImageSettings(allowed_hosts=(images.host,)), database_url=db_url, ingress_replicas=2)
    serve.run(build_app(config), name="metrics-fleet", route_prefix="/metrics-fleet")
    url = serve_http + "/metrics-fleet"
    try:
        template = ls_request("predict_interactive_pos_neg_keypoints")
        clicks = 6
        for k in range(clicks):  # a new connection each: the proxy spreads them over the ingress replicas
            body = predict_body(template, images.url("disk.png"), (W, H), [(50.0, 50.0, True)], PROJECT, f"f{k}")
            assert "errors" not in requests.post(url + "/predict", json=body, timeout=120).json()
        deadline = time.monotonic() + 90  # the other ingress sends its snapshot every few seconds
        while True:
            found, seen = {}, []
            for _ in range(4):  # whichever ingress answers
                reply = requests.get(url + "/metrics", timeout=30)
                assert reply.status_code == 200
                families = {f.name: f for f in text_string_to_metric_families(reply.text)}
                total = sum(s.value for s in families["clickmask_clicks"].samples if s.name.endswith("_total"))
                ingresses = {s.labels["ingress"] for s in families["clickmask_click_latency_seconds"].samples}
                seen.append((total, len(ingresses)))
                found = families
            if all(s == (clicks, 2) for s in seen) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert all(s == (clicks, 2) for s in seen), f"(clicks summed over ingresses, ingresses) per scrape: {seen}"
        jobs = [s for s in found["clickmask_finetune_jobs"].samples if s.labels["state"] == "queued"]
        assert len(jobs) == 1 and "ingress" not in jobs[0].labels  # read from the database once, not per ingress
    finally:
        serve.delete("metrics-fleet")
        images.stop()


def test_the_recorder_queue_size_setting_sizes_the_queue_of_the_served_ingress(serve_http, tmp_path, monkeypatch):
    """CLICKMASK_RECORDER_QUEUE_SIZE, read where `clickmask serve` builds its config, reaches the deployed ingress."""
    from dataclasses import replace

    from ray import serve

    from orchestrator.cli import build_parser
    from orchestrator.commands.serve import serve_config
    from orchestrator.serving.app import build_app

    monkeypatch.setenv("CLICKMASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKMASK_RECORDER_QUEUE_SIZE", "37")
    args = build_parser().parse_args(["serve", "--model", str(tiny_checkpoint(tmp_path / "tiny.pt"))])
    _, config = serve_config(args)
    serve.run(build_app(replace(config, cpus_per_replica=0)), name="queue-size", route_prefix="/queue-size")
    try:
        ingress = serve.get_deployment_handle("Backend", "queue-size")
        assert ingress.stats.remote().result()["recorder"]["capacity"] == 37
    finally:
        serve.delete("queue-size")
