"""Several projects fine-tuning at once, on SQLite and PostgreSQL: the scheduler runs queued jobs oldest first, as
many at once as it has job slots, never two of one project, and a project that asks again while its job runs goes
after the projects already waiting. The job itself is replaced by a stand-in: this is about the scheduler's own
order and concurrency (the job on Ray is tests/test_finetune_ray.py)."""
from __future__ import annotations

import threading
from collections import defaultdict

from orchestrator import jobs
from orchestrator.scheduler import RunnerConfig, Scheduler
from support import wait_for


class Recording(Scheduler):
    """Runs each claimed job as a stand-in that records when it ran, beside which others, in which state. With
    `hold`, a job runs until the test sets its event in `release`."""

    def __init__(self, factory, slots: int, on_start=None, hold: bool = False):
        super().__init__(factory, RunnerConfig(store_url="unused", concurrent_jobs=slots, trigger_check_s=1e9))
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.active, self.most_at_once = set(), 0
        self.on_start = on_start or (lambda job_id: None)
        self.release = defaultdict(threading.Event) if hold else None

    def run(self, job_id: int) -> None:
        with self.lock:
            assert jobs.get(self.factory, job_id).state == "running"  # claimed before it starts
            self.started.append(job_id)
            self.active.add(job_id)
            self.most_at_once = max(self.most_at_once, len(self.active))
        self.on_start(job_id)
        if self.release is not None:
            assert self.release[job_id].wait(60), f"job {job_id} was never released"
        with self.lock:
            self.active.discard(job_id)
        jobs.finish(self.factory, job_id, "succeeded")

    def running(self) -> set[int]:
        with self.lock:
            return set(self.active)


def project_of(factory, job_id: int) -> int:
    from orchestrator.db import Project

    with factory() as session:
        return session.get(Project, jobs.get(factory, job_id).project_id).ls_project_id


def test_two_slots_run_two_projects_at_once_oldest_first(session_factory):
    queued = [jobs.enqueue(session_factory, p, "webhook") for p in (1, 2, 3)]
    scheduler = Recording(session_factory, slots=2, hold=True)
    ran = []
    ticking = threading.Thread(target=lambda: ran.extend(scheduler.tick()))
    ticking.start()
    wait_for(lambda: scheduler.running() == set(queued[:2]), "the two oldest jobs in the two slots", timeout=30)
    scheduler.release[queued[0]].set()
    wait_for(lambda: scheduler.running() == set(queued[1:]), "the third job in the slot freed", timeout=30)
    for job_id in queued[1:]:
        scheduler.release[job_id].set()
    ticking.join(60)
    assert ran == queued and scheduler.started == queued and scheduler.most_at_once == 2
    assert all(jobs.get(session_factory, j).state == "succeeded" for j in queued)


def test_a_project_asking_again_during_its_job_goes_after_the_projects_waiting(session_factory):
    busy = jobs.enqueue(session_factory, 1, "webhook")
    waiting = [jobs.enqueue(session_factory, p, "webhook") for p in (2, 3)]
    again = []

    def busy_project_asks_again(job_id):  # project 1's annotators keep submitting while its job runs
        if job_id == busy:
            again.append(jobs.enqueue(session_factory, 1, "webhook"))

    scheduler = Recording(session_factory, slots=1, on_start=busy_project_asks_again)
    assert scheduler.tick() == [busy, *waiting]  # its new job is not taken ahead of projects 2 and 3
    assert scheduler.tick() == again
    assert [project_of(session_factory, j) for j in scheduler.started] == [1, 2, 3, 1]
    assert scheduler.most_at_once == 1


def test_one_project_never_runs_twice_at_once_whatever_the_slots(session_factory):
    first = jobs.enqueue(session_factory, 1, "webhook")
    second = []
    scheduler = Recording(session_factory, slots=3,
                          on_start=lambda j: second.append(jobs.enqueue(session_factory, 1, "cli")) if j == first
                          else None)
    assert scheduler.tick() == [first]  # the second job of project 1 waits for the first to finish
    assert scheduler.tick() == second and scheduler.most_at_once == 1
