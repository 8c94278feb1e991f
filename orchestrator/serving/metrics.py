"""/metrics: the backend's figures in Prometheus text format, kept by the ingress with prometheus_client.

Why prometheus_client in the ingress: every click, error and image fetch passes through it, so the ingress sees
them as they happen, from memory. Ray's own metrics (`ray.util.metrics`) are aggregated per node by Ray's metrics
agent and exported on the agent's port, which the ingress cannot serve; Ray Serve's request counts and latencies
are exported there already, and these figures sit beside them. prometheus_client's multiprocess mode needs every
process to share one folder on one host, which Ray replicas on several nodes do not.

Several ingress replicas: a scrape through the Serve proxy reaches one of them. So with more than one, the
application has a MetricsBoard deployment (one replica, no CPU) to which each ingress sends a snapshot of its
figures every PUSH_S seconds and when it is scraped; the scraped ingress answers with every live ingress's
figures, each series labelled `ingress` (sum over it). A snapshot older than STALE_S (an ingress that went away)
is left out. Model replicas are seen through their answers (each names the replica that gave it). Job states are
read from the database when scraped, so they hold whatever process runs the scheduler.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from ray import serve

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds per click: the model answers in tens of milliseconds on a CPU, a first click on a new image waits for it.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
PUSH_S = 5.0  # how often an ingress sends its snapshot to the board
STALE_S = 30.0  # a snapshot this old belongs to an ingress that is gone
RECENT_REQUESTS = 4096  # answered /predict requests whose exact times an ingress keeps (for benchmarks)


@serve.deployment(name="MetricsBoard", num_replicas=1, ray_actor_options={"num_cpus": 0})
class MetricsBoard:
    """The latest snapshot of each ingress replica's figures."""

    def __init__(self):
        self._latest: dict[str, tuple[float, list]] = {}

    def put(self, ingress: str, families: list) -> None:
        self._latest[ingress] = (time.monotonic(), families)

    def snapshots(self) -> dict[str, list]:
        now = time.monotonic()
        self._latest = {k: v for k, v in self._latest.items() if now - v[0] <= STALE_S}
        return {k: families for k, (_, families) in self._latest.items()}


class ServingMetrics:
    """The ingress's registry (its own, so nothing else in the process leaks into /metrics)."""

    def __init__(self, fetcher=None, recorder=None, session_factory=None, board=None, ingress: str = ""):
        disable_created_metrics()  # a `_created` sample per series doubles the page and tells nothing here
        self.board, self.ingress = board, ingress
        self.shared = CollectorRegistry()  # the same whichever ingress answers: not per ingress
        self.shared.register(_JobStates(session_factory))
        self.registry = CollectorRegistry()
        r = self.registry
        self.clicks = Counter("clickmask_clicks", "Clicks answered with a mask, by the model version that answered",
                              ["model_version"], registry=r)
        self.errors = Counter("clickmask_errors", "Requests answered with an error, by endpoint and kind",
                              ["endpoint", "kind"], registry=r)
        self.click_latency = Histogram("clickmask_click_latency_seconds",
                                       "Time to answer one click, image fetch and mask encoding included",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Histogram("clickmask_request_seconds", "Time to answer a request, by endpoint",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_time = Histogram("clickmask_model_seconds", "Time the model replicas spent predicting for a "
                                    "/predict request (the rest of its time is the serving path's)",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=RECENT_REQUESTS)  # (s, model s, body bytes)
        self.replica_images = Counter("clickmask_replica_image_lookups",
                                      "Whether the model replica answered without being sent the click's image "
                                      "(hit) or was sent it (miss: new to it, or to this ingress)", ["result"],
                                      registry=r)
        self.replica_version = Gauge("clickmask_replica_model_version",
                                     "1 for the model version that last answered a project on a model replica",
                                     ["replica", "project", "model_version"], registry=r)
        self._versions: dict[tuple[str, str], str] = {}  # (replica, project) -> version shown
        r.register(_IngressState(fetcher, recorder))
        if board is not None:
            threading.Thread(target=self._push_forever, name="metrics-push", daemon=True).start()

    def predicted(self, seconds: float, model_seconds: float, body_bytes: int) -> None:
        """A /predict request answered in `seconds`, of which the model replicas predicted for `model_seconds`."""
        self.requests.labels("predict").observe(seconds)
        if model_seconds:
            self.model_time.observe(model_seconds)
            self.recent.append((seconds, model_seconds, body_bytes))

    def answered(self, replica: str, project: int | None, version: str, seconds: float) -> None:
        self.clicks.labels(version).inc()
        self.click_latency.observe(seconds)
        key = (replica or "unknown", str(project) if project is not None else "none")
        old = self._versions.get(key)
        if old != version:
            if old is not None:
                self.replica_version.remove(*key, old)
            self.replica_version.labels(*key, version).set(1)
            self._versions[key] = version

    def text(self) -> bytes:
        """The exposition (blocking: it may ask the board and the database)."""
        if self.board is None:
            return generate_latest(self.registry) + generate_latest(self.shared)
        self._push()
        merged = CollectorRegistry()
        merged.register(_Merged(self.board.snapshots.remote().result(timeout_s=10)))
        return generate_latest(merged) + generate_latest(self.shared)

    def snapshot(self) -> list:
        """This ingress's families as plain data (name, help, type, [(sample, labels, value)])."""
        return [(m.name, m.documentation, m.type, [(x.name, dict(x.labels), x.value) for x in m.samples])
                for m in self.registry.collect()]

    def _push(self) -> None:
        self.board.put.remote(self.ingress, self.snapshot()).result(timeout_s=10)

    def _push_forever(self) -> None:
        while True:
            time.sleep(PUSH_S)
            try:
                self._push()
            except Exception as exc:  # the board restarting: the next push will do
                log.debug("metrics push failed: %s", exc)


class _Merged:
    """Every ingress's snapshot, each sample labelled with its ingress."""

    def __init__(self, snapshots: dict[str, list]):
        self.snapshots = snapshots

    def describe(self):
        return []

    def collect(self):
        families: dict[str, Metric] = {}
        for ingress, snapshot in sorted(self.snapshots.items()):
            for name, documentation, kind, samples in snapshot:
                family = families.setdefault(name, Metric(name, documentation, kind))
                for sample, labels, value in samples:
                    family.add_sample(sample, {**labels, "ingress": ingress}, value)
        yield from families.values()


class _IngressState:
    """Read when scraped: the ingress's image cache and click recorder."""

    def __init__(self, fetcher, recorder):
        self.fetcher, self.recorder = fetcher, recorder

    def describe(self):
        return []  # collected only when scraped

    def collect(self):
        if self.fetcher is not None:
            cache = self.fetcher.cache
            lookups = CounterMetricFamily("clickmask_image_cache_lookups",
                                          "Lookups in the ingress's cache of decoded images", labels=["result"])
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            yield lookups
            yield GaugeMetricFamily("clickmask_image_cache_bytes", "Bytes of decoded images cached", cache.bytes)
        if self.recorder is not None:
            status = self.recorder.status()
            yield CounterMetricFamily("clickmask_clicks_recorded", "Clicks written to the database", status.recorded)
            yield CounterMetricFamily("clickmask_clicks_dropped", "Clicks that could not be recorded", status.dropped)
            yield GaugeMetricFamily("clickmask_recorder_queued", "Clicks waiting to be written", status.queued)


class _JobStates:
    """Fine-tuning jobs per state, from the database when scraped (the scheduler may run in another process)."""

    def __init__(self, session_factory):
        self.session_factory = session_factory

    def describe(self):
        return []  # collected only when scraped (the database query must not run at registration)

    def collect(self):
        if self.session_factory is None:
            return
        from sqlalchemy import func, select

        from orchestrator.db import TrainingJob

        up = GaugeMetricFamily("clickmask_database_up", "1 when the database answered this scrape")
        try:
            with self.session_factory() as session:
                counts = {state: n for state, n in session.execute(
                    select(TrainingJob.state, func.count()).group_by(TrainingJob.state))}
        except Exception as exc:  # a scrape during a database outage still answers, and says so
            log.warning("metrics: job states unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("clickmask_finetune_jobs", "Fine-tuning jobs by state (all projects)",
                                 labels=["state"])
        for state in sorted(set(JOB_STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
