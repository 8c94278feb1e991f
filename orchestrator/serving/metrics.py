"""/metrics: the backend's figures in Prometheus text format, kept by the ingress with prometheus_client.

Why here and why prometheus_client: every click, error and image fetch passes through the ingress, so one process
sees them all and `/metrics` answers from memory, with no hop. The ingress is one replica (a thin async router);
were it scaled out, each replica would keep its own figures and a scrape through the Serve proxy would reach one
of them. Ray's own metrics (`ray.util.metrics`) are aggregated per node by Ray's metrics agent and exported on the
agent's port, which the ingress cannot serve; Ray Serve's request counts and latencies are exported there already,
and these figures sit beside them. prometheus_client's multiprocess mode needs every process to share one folder
on one host, which Ray replicas on several nodes do not. Model replicas are seen through their answers (each names
the replica that gave it); job states and the recorder are read when scraped (job states from the database, so
they hold whatever process runs the scheduler).
"""
from __future__ import annotations

import logging

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds per click: the model answers in tens of milliseconds on a CPU, a first click on a new image waits for it.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class ServingMetrics:
    """The ingress's registry (its own, so nothing else in the process leaks into /metrics)."""

    def __init__(self, fetcher=None, recorder=None, session_factory=None):
        disable_created_metrics()  # a `_created` sample per series doubles the page and tells nothing here
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
        self.replica_images = Counter("clickmask_replica_image_lookups",
                                      "Whether the model replica asked already held the click's image (hit) or had "
                                      "to be sent it (miss)", ["result"], registry=r)
        self.replica_version = Gauge("clickmask_replica_model_version",
                                     "1 for the model version that last answered a project on a model replica",
                                     ["replica", "project", "model_version"], registry=r)
        self._versions: dict[tuple[str, str], str] = {}  # (replica, project) -> version shown
        r.register(_ReadOnScrape(fetcher, recorder, session_factory))

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
        return generate_latest(self.registry)


class _ReadOnScrape:
    """Figures read when scraped: the ingress's image cache, the click recorder, and fine-tuning jobs per state
    from the database (the scheduler may run in another process)."""

    def __init__(self, fetcher, recorder, session_factory):
        self.fetcher, self.recorder, self.session_factory = fetcher, recorder, session_factory

    def describe(self):
        return []  # collected only when scraped (the database query must not run at registration)

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
        if self.session_factory is not None:
            yield from self._jobs()

    def _jobs(self):
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
