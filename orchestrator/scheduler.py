"""The fine-tuning schedule: turns triggers into jobs, runs each job as a Ray task, gates and records the result.

One loop thread (in `clickmask serve`, or in `clickmask finetune` for one job): every `poll_s` it marks failed the
jobs whose runner went silent, queues a job for each project whose triggers are due (N new annotations, or T minutes
with new data), then claims and runs the jobs queued at that moment, oldest first, as many at once as the cluster
has job slots (orchestrator.placement; one where it declares none). Each project has at most one queued job and
runs one at a time, so with several projects waiting each gets its turn in the order it asked: a project that
asks again while its job runs goes after the projects already waiting. A job:
  1. snapshots the project's submitted annotations and splits them by image (workers.finetune.split_by_image);
  2. runs workers.finetune on Ray (one CPU, nice 19 in the idle scheduling class, never on a serving replica; in a
     job slot of the job group where the cluster declares one, orchestrator.placement), beating while it waits;
  3. records the candidate version (checkpoint key, parent, metrics of both) as promoted or rejected by `better`;
  4. records the job: state, timings, counts, split, metrics, decision, or the error that stopped it.
Promotion is a registry update; serving picks it up within the ingress's cache time (orchestrator.registry).
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from integrations.images import ImageSettings

from . import jobs, registry
from .db import ModelVersion, Project, TrainingJob, utcnow
from .settings import FinetuneSettings

log = logging.getLogger(__name__)

MIOU_TOLERANCE = 0.005


def better(parent: dict, candidate: dict, miou_tolerance: float = MIOU_TOLERANCE) -> tuple[bool, str]:
    """The gate: the candidate must need fewer clicks to 85% IoU (NoC@85, lower) on the validation objects, and
    its mean IoU after 5 clicks must not drop by more than `miou_tolerance`."""
    noc_old, noc_new = parent["NoC@85"], candidate["NoC@85"]
    miou_old, miou_new = parent["mIoU@5"], candidate["mIoU@5"]
    figures = f"NoC@85 {noc_old:.2f} -> {noc_new:.2f}, mIoU@5 {miou_old:.3f} -> {miou_new:.3f}"
    if noc_new >= noc_old:
        return False, f"not better: {figures}"
    if miou_new < miou_old - miou_tolerance:
        return False, f"worse mIoU@5: {figures}"
    return True, f"better: {figures}"


@dataclass(frozen=True)
class RunnerConfig:
    store_url: str
    images: ImageSettings = field(default_factory=ImageSettings)
    s3_endpoint_url: str | None = None
    base_name: str = registry.BASE_NAME  # the name the deployment serves its base checkpoint under
    base_checkpoint: str = "base"  # "base" (bundled) or a checkpoint path every Ray worker can read
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    poll_s: float = 2.0  # how often queued jobs (webhook, command line) are looked for
    trigger_check_s: float = 30.0  # how often the N and T triggers are evaluated (a query per project)
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    concurrent_jobs: int | None = None  # jobs at once; None: the cluster's job slots (at least one)


@dataclass
class Prepared:
    job_id: int
    project_id: int
    name: str
    parent_id: int
    spec: object  # workers.finetune.FinetuneSpec
    details: dict


class Scheduler:
    """`adjust_spec` changes a job's spec before it runs: for experiments only (the benchmark trains a deliberately
    worse candidate on shuffled masks with it)."""

    def __init__(self, factory: sessionmaker[Session], config: RunnerConfig,
                 adjust_spec: Callable[[object], object] | None = None):
        self.factory, self.config, self.adjust_spec = factory, config, adjust_spec
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._triggers_checked = float("-inf")

    # ------------------------------------------------------------------------------------------------ the loop

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="finetune-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the database may be briefly away: log, wait, go on
                log.exception("fine-tuning scheduler tick failed")
            self._wake.wait(self.config.poll_s)
            self._wake.clear()

    def tick(self) -> list[int]:
        """One round: fail silent jobs, queue due projects, run what is claimable. Returns the jobs it ran."""
        for job_id in jobs.fail_stale(self.factory, self.config.stale_after_s):
            log.warning("fine-tuning job %s marked failed: its runner went silent", job_id)
        ft = self.config.finetune
        if time.monotonic() - self._triggers_checked >= self.config.trigger_check_s:
            self._triggers_checked = time.monotonic()
            for ls_project, trigger in jobs.due_projects(self.factory, ft.every_annotations, ft.every_minutes):
                log.info("project %s: queued fine-tuning job %s (%s)", ls_project,
                         jobs.enqueue(self.factory, ls_project, trigger), trigger)
        # Claimed only when a slot is free: a claimed job is "running" and must beat, so it may not wait here.
        ran, running = [], set()
        slots = self.slots()
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="finetune-job") as pool:
            for job_id in jobs.claimable(self.factory):
                while len(running) >= slots:
                    _, running = wait(running, return_when=FIRST_COMPLETED)
                if self._stop.is_set():
                    break
                if jobs.claim(self.factory, job_id):
                    running.add(pool.submit(self.run, job_id))
                    ran.append(job_id)
        return ran

    def slots(self) -> int:
        if self.config.concurrent_jobs is not None:
            return max(1, self.config.concurrent_jobs)
        from .placement import cluster_resources, job_slots

        return job_slots(cluster_resources())

    # ------------------------------------------------------------------------------------------------ one job

    def run(self, job_id: int) -> None:
        """Run a claimed job to its end; every failure is recorded on the job, none escapes."""
        t0 = time.perf_counter()
        prepared = None
        try:
            prepared = self.prepare(job_id)
            result = self.execute(prepared)
            self.record(prepared, result, time.perf_counter() - t0)
        except Exception as exc:
            log.warning("fine-tuning job %s failed: %s", job_id, exc)
            details = dict(prepared.details if prepared else {}, seconds_total=time.perf_counter() - t0)
            jobs.finish(self.factory, job_id, "failed", error=_error_text(exc), details=details)

    def prepare(self, job_id: int) -> Prepared:
        from workers.finetune import AnnotatedImage, FinetuneSpec, split_by_image

        cfg, ft = self.config, self.config.finetune
        with self.factory.begin() as session:
            job = session.get(TrainingJob, job_id)
            project = session.get(Project, job.project_id)
            parent = registry.serving_row(session, project.id) or registry.ensure_base(session, cfg.base_name)
            images = jobs.snapshot(session, project.id)
            train_uris, val_uris = split_by_image([im.uri for im in images], ft.val_percent)
            by_uri = {im.uri: im for im in images}
            details = {
                "split": {"rule": f"sha256(uri) % 100 < {ft.val_percent}: validation",
                          "train_image_ids": [by_uri[u].image_id for u in train_uris],
                          "val_image_ids": [by_uri[u].image_id for u in val_uris]},
                "parent": parent.name,
                "annotated_images": len(images),
            }
            job.base_version_id, job.train_count, job.val_count = parent.id, len(train_uris), len(val_uris)
            job.details = details
            name = f"p{project.ls_project_id}-ft{job_id}"
            project_id, parent_id, parent_key = project.id, parent.id, parent.checkpoint_uri
        if not train_uris or not val_uris:
            raise ValueError(f"need annotated images for both training and validation, have {len(images)}")
        spec = FinetuneSpec(
            parent=f"store:{parent_key}" if parent_key else cfg.base_checkpoint,
            out_key=f"checkpoints/{name}.pt", store_url=cfg.store_url, s3_endpoint_url=cfg.s3_endpoint_url,
            images=cfg.images, samples=ft.samples, lr=ft.lr, eval_objects=ft.eval_objects, seed=job_id,
            train=[AnnotatedImage(u, by_uri[u].masks) for u in train_uris],
            val=[AnnotatedImage(u, by_uri[u].masks) for u in val_uris],
        )
        if self.adjust_spec is not None:
            spec = self.adjust_spec(spec)
        return Prepared(job_id, project_id, name, parent_id, spec, details)

    def execute(self, prepared: Prepared) -> dict:
        import ray

        from workers.finetune import remote_finetune

        from .placement import cluster_resources, job_options

        options = job_options(cluster_resources(), self.config.finetune.cpus)
        ref = remote_finetune().options(**options).remote(prepared.spec)
        deadline = time.monotonic() + self.config.finetune.timeout_minutes * 60
        while True:
            done, _ = ray.wait([ref], timeout=self.config.heartbeat_s)
            if done:
                return ray.get(ref)
            jobs.beat(self.factory, prepared.job_id)
            if time.monotonic() > deadline or self._stop.is_set():
                ray.cancel(ref, force=True)
                why = "timed out" if not self._stop.is_set() else "the scheduler stopped"
                raise TimeoutError(f"{why} after {self.config.finetune.timeout_minutes:g} min at most; cancelled")

    def record(self, prepared: Prepared, result: dict, seconds: float) -> None:
        ok, reason = better(result["parent"], result["candidate"])
        if ok and result["objects"]["val"] < self.config.finetune.min_val_objects:
            ok, reason = False, (f"too few validation objects to trust ({result['objects']['val']} < "
                                 f"{self.config.finetune.min_val_objects}); {reason}")
        details = dict(prepared.details, parent_metrics=result["parent"], candidate_metrics=result["candidate"],
                       objects=result["objects"], seconds=dict(result["seconds"], total=seconds),
                       framing=result.get("framing"),
                       samples=result["train"].get("samples_seen"), loss=result["train"].get("loss"))
        with self.factory.begin() as session:
            serving = registry.serving_row(session, prepared.project_id)
            current = serving or registry.ensure_base(session, self.config.base_name)
            if ok and current.id != prepared.parent_id:
                # Someone promoted or rolled back during the job: the comparison no longer holds.
                ok, reason = False, f"serving changed during the job; kept as a candidate ({reason})"
                status = "candidate"
            else:
                status = "promoted" if ok else "rejected"
            version = ModelVersion(
                name=prepared.name, project_id=prepared.project_id, parent_id=prepared.parent_id,
                checkpoint_uri=prepared.spec.out_key, status=status, promoted_at=utcnow() if ok else None,
                metrics={"validation": result["candidate"], "parent_validation": result["parent"],
                         "job": prepared.job_id, "decision": reason},
            )
            session.add(version)
            session.flush()
            details["decision"] = {"promoted": ok, "reason": reason}
            job = session.get(TrainingJob, prepared.job_id)
            job.state, job.finished_at, job.result_version_id, job.details = "succeeded", utcnow(), version.id, details
        log.info("fine-tuning job %s: %s %s (%s)", prepared.job_id, prepared.name, status, reason)


def _error_text(exc: BaseException, limit: int = 4000) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    if not str(exc):
        text += " " + "".join(traceback.format_exception_only(exc)).strip()
    return text[:limit]
