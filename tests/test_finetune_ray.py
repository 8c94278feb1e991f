"""Fine-tuning on a real local Ray beside a real Ray Serve deployment: annotations arrive through /webhook as Label
Studio sends them, the scheduler runs the job as a Ray task, the registry promotes and rolls back, and a client
clicking all along sees no failed request and the version switch. Small untrained networks: these tests are about
the machinery (quality is the benchmark's: tests/bench_finetune.py)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from finetune_support import annotation_body, disk_images, predict_body, tiny_checkpoint
from image_server import ImageServer
from support import wait_for

PROJECT = 42
SIZE = (128, 96)  # w, h of the disk images


@pytest.fixture(scope="module")
def stack(serve_http, tmp_path_factory, ls_request):
    from alembic import command
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("finetune")
    images = disk_images(root, 6)
    server = ImageServer(root)
    db_url = f"sqlite:///{root / 'clickmask.db'}"
    command.upgrade(alembic_config(db_url), "head")
    settings = ImageSettings(allowed_hosts=(server.host,))
    checkpoint = tiny_checkpoint(root / "tiny.pt")
    config = ServeConfig(checkpoint=str(checkpoint), model_version="tiny-base", images=settings,
                         database_url=db_url, store_url=str(root / "store"), registry_ttl_s=0.5,
                         cpus_per_replica=0)  # other modules' apps may hold the test cluster's 2 CPUs
    serve.run(build_app(config), name="ft", route_prefix="/ft")
    engine = make_engine(db_url)
    yield {"url": serve_http + "/ft", "server": server, "images": images, "root": root, "settings": settings,
           "checkpoint": checkpoint, "db_url": db_url, "factory": make_session_factory(engine),
           "predict": ls_request("predict_interactive_pos_neg_keypoints"),
           "created": ls_request("webhook_annotation_created"), "start": ls_request("webhook_start_training")}
    serve.delete("ft")
    engine.dispose()
    server.stop()


def runner(stack, **finetune):
    from orchestrator.scheduler import RunnerConfig
    from orchestrator.settings import FinetuneSettings

    defaults = dict(every_annotations=6, every_minutes=0, samples=96, eval_objects=2, timeout_minutes=5, cpus=0,
                    min_val_objects=0)
    return RunnerConfig(store_url=str(stack["root"] / "store"), images=stack["settings"], base_name="tiny-base",
                        base_checkpoint=str(stack["checkpoint"]), finetune=FinetuneSettings(**{**defaults, **finetune}),
                        poll_s=0.2, heartbeat_s=0.5)


class Clicker(threading.Thread):
    """A client clicking without pause on one image of the project, as an annotator in Label Studio would."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.body = predict_body(stack["predict"], stack["server"].url(stack["images"][0][0]), SIZE,
                                 [(31.0, 42.0, True)], PROJECT)
        self.url, self.stop, self.answers, self.failures = stack["url"] + "/predict", threading.Event(), [], []

    def run(self):
        session = requests.Session()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                reply = session.post(self.url, json=self.body, timeout=30)
                answer = reply.json()
                if reply.status_code != 200 or "errors" in answer:
                    self.failures.append(reply.text[:200])
                else:
                    self.answers.append((time.perf_counter() - t0, answer["results"][0]["model_version"]))
            except Exception as exc:  # a refused or broken connection is a failed request too
                self.failures.append(repr(exc))

    def versions_since(self, n: int) -> list[str]:
        return [v for _, v in self.answers[n:]]


def test_annotations_through_the_webhook_train_on_ray_and_promotion_swaps_without_a_failed_request(
        stack, monkeypatch, capsys):
    from orchestrator import jobs
    from orchestrator.cli import main
    from orchestrator.db import ModelVersion, TrainingJob
    from orchestrator.scheduler import Scheduler, better

    clicker = Clicker(stack)
    clicker.start()
    wait_for(lambda: len(clicker.answers) >= 3, "three answers", timeout=60)
    assert {v for _, v in clicker.answers} == {"tiny-base"}
    for i, (name, masks) in enumerate(stack["images"], 1):
        body = annotation_body(stack["created"], 100 + i, PROJECT, i, stack["server"].url(name), masks)
        reply = requests.post(stack["url"] + "/webhook", json=body, timeout=5)
        assert reply.json()["status"] == "applied", reply.text

    scheduler = Scheduler(stack["factory"], runner(stack))
    (job_id,) = scheduler.tick()  # 6 new annotations: the N trigger queues a job, and it runs on Ray
    factory = stack["factory"]
    with factory() as s:
        job = s.get(TrainingJob, job_id)
        version = s.get(ModelVersion, job.result_version_id)
    assert job.state == "succeeded" and job.trigger == "annotations", job.error
    assert job.train_count + job.val_count == 6 and job.val_count >= 1
    assert set(job.details["split"]["train_image_ids"]).isdisjoint(job.details["split"]["val_image_ids"])
    assert job.started_at <= job.finished_at and job.details["seconds"]["train"] > 0
    promoted, _ = better(job.details["parent_metrics"], job.details["candidate_metrics"])  # min_val_objects 0
    assert version.status == ("promoted" if promoted else "rejected")
    assert version.checkpoint_uri == f"checkpoints/p{PROJECT}-ft{job_id}.pt"
    assert (stack["root"] / "store" / version.checkpoint_uri).is_file()
    assert version.metrics["parent_validation"] == job.details["parent_metrics"]

    # Label Studio's "Start training" answers at once with the queued job.
    t0 = time.perf_counter()
    reply = requests.post(stack["url"] + "/webhook", json={**stack["start"], "project": {"id": PROJECT}}, timeout=5)
    assert time.perf_counter() - t0 < 1.0 and reply.json()["status"] == "queued"
    assert jobs.get(factory, reply.json()["job"]).state == "queued"
    jobs.finish(factory, reply.json()["job"], "cancelled")

    # Promotion and rollback are registry updates that serving follows, while the client keeps clicking.
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", stack["db_url"])
    models = ["models", "--model", str(stack["checkpoint"].with_name("tiny-base"))]
    assert main([*models, "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[1].startswith("tiny-base") and version.name in listed
    n = len(clicker.answers)
    assert main([*models, "promote", version.name]) == 0
    wait_for(lambda: version.name in clicker.versions_since(n), "the promoted version to answer", timeout=20)
    n = len(clicker.answers)
    assert main([*models, "rollback", "--project", str(PROJECT)]) == 0
    assert "serves tiny-base" in capsys.readouterr().out
    wait_for(lambda: clicker.versions_since(n)[-3:] == ["tiny-base"] * 3, "the base to answer again", timeout=20)
    setup = requests.post(stack["url"] + "/setup", json={"project": f"{PROJECT}.1", "schema": stack["predict"]
                                                           ["label_config"]}, timeout=5).json()
    assert setup == {"model_version": "tiny-base"}
    clicker.stop.set()
    clicker.join()
    assert clicker.failures == []
    latencies = sorted(s for s, _ in clicker.answers)
    print(f"\n{len(latencies)} requests, p95 {latencies[int(0.95 * len(latencies))] * 1000:.0f} ms")


def test_a_failing_or_killed_job_is_marked_failed_with_its_error_and_can_be_retried(stack):
    from orchestrator import jobs
    from orchestrator.scheduler import Scheduler

    from sqlalchemy import func, select

    from orchestrator.db import ModelVersion

    factory = stack["factory"]
    with factory() as s:
        before = s.scalar(select(func.count()).select_from(ModelVersion))

    def forbidden(spec):
        spec.train[0].uri = "http://169.254.169.254/latest/meta-data"
        return spec

    job = jobs.enqueue(factory, PROJECT, "cli")
    Scheduler(factory, runner(stack), adjust_spec=forbidden).tick()
    failed = jobs.get(factory, job)
    assert failed.state == "failed" and "not allowed" in failed.error.lower() and failed.finished_at

    # Killed: a job longer than its time limit is cancelled (its worker process killed) and marked failed.
    job = jobs.enqueue(factory, PROJECT, "cli")
    Scheduler(factory, runner(stack, samples=1_000_000, timeout_minutes=0.02)).tick()
    killed = jobs.get(factory, job)
    assert killed.state == "failed" and "timed out" in killed.error
    with factory() as s:  # nothing was recorded as a version, nothing changed what serves
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == before
    retry = jobs.enqueue(factory, PROJECT, "cli")
    assert jobs.claim(factory, retry)  # retryable
    jobs.finish(factory, retry, "cancelled")


def finetune_worker(timeout: float = 120.0) -> int:
    """The pid of the Ray worker running a fine-tuning task of this test run (a descendant of this process, which
    started the test cluster's raylet), once there is one."""
    def descends_from_us(pid: str) -> bool:
        while pid not in ("0", "1"):
            if pid == str(os.getpid()):
                return True
            try:
                pid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                return False
        return False

    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                running = proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::finetune")
            except OSError:
                continue
            if running and descends_from_us(proc.name):
                return int(proc.name)
        time.sleep(0.2)
    raise AssertionError("no fine-tuning worker appeared")


def test_a_job_whose_worker_is_killed_is_marked_failed_serving_goes_on_and_a_retry_succeeds(stack):
    from orchestrator import jobs
    from orchestrator.scheduler import Scheduler

    factory = stack["factory"]
    for i, (name, masks) in enumerate(stack["images"], 1):  # the job's data (sent again if the first test ran)
        body = annotation_body(stack["created"], 100 + i, PROJECT, i, stack["server"].url(name), masks)
        assert requests.post(stack["url"] + "/webhook", json=body, timeout=30).status_code == 200
    clicker = Clicker(stack)
    clicker.start()
    wait_for(lambda: len(clicker.answers) >= 3, "three answers", timeout=60)
    serving = clicker.versions_since(0)[-1]
    job = jobs.enqueue(factory, PROJECT, "cli")
    running = threading.Thread(target=Scheduler(factory, runner(stack, samples=1_000_000)).tick)
    running.start()
    os.kill(finetune_worker(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    running.join()
    killed = jobs.get(factory, job)
    assert killed.state == "failed" and killed.finished_at, killed.error
    assert "died" in killed.error.lower() or "crash" in killed.error.lower(), killed.error
    n = len(clicker.answers)
    wait_for(lambda: len(clicker.answers) >= n + 3, "three more answers", timeout=20)
    clicker.stop.set()
    clicker.join()
    assert clicker.failures == [] and set(clicker.versions_since(0)) == {serving}  # serving never noticed

    retry = jobs.enqueue(factory, PROJECT, "cli")
    Scheduler(factory, runner(stack)).tick()
    assert jobs.get(factory, retry).state == "succeeded", jobs.get(factory, retry).error


def test_clickmask_finetune_runs_the_job_on_ray_and_reports_it(stack, monkeypatch, capsys):
    from orchestrator.cli import main

    for name, value in {"DATABASE_URL": stack["db_url"], "STORE_URL": str(stack["root"] / "store"),
                        "ALLOWED_IMAGE_HOSTS": stack["server"].host, "FINETUNE_SAMPLES": "48",
                        "FINETUNE_EVAL_OBJECTS": "2", "FINETUNE_CPUS": "0"}.items():
        monkeypatch.setenv(f"CLICKMASK_{name}", value)
    code = main(["finetune", "--project", str(PROJECT), "--model", str(stack["checkpoint"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "succeeded" in out and f"version p{PROJECT}-ft" in out and "split" in out
