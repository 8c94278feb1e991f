"""The applications a Serve config deploys on an existing cluster (`serve deploy`, or KubeRay's RayService; see
orchestrator/deploy/): the backend, and the fine-tuning scheduler that `clickmask serve` otherwise runs in its own
process. Both are configured exactly as `clickmask serve` is, from the same CLICKMASK_* variables, read where
Serve builds the application; the built application carries them to every replica."""
from __future__ import annotations

from ray import serve

from orchestrator.placement import cluster_resources, stable_node_options


def _settings():
    from .app import config_from_env

    return config_from_env()


def backend(args: dict | None = None):
    """Serve application builder for the backend (import path orchestrator.serving.entrypoint:backend). Migrates
    the database first, as `clickmask serve` does."""
    from orchestrator.commands.common import migrate

    from .app import build_app

    settings, config = _settings()
    if config.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(config.database_url)
    return build_app(config)


@serve.deployment(name="FinetuneScheduler", num_replicas=1, max_ongoing_requests=4)
class FinetuneScheduler:
    """One replica running the scheduler thread; should two ever run (a restart overlapping), the database's job
    claims keep each job to one runner."""

    def __init__(self, settings, config):
        from orchestrator.commands.serve import start_scheduler

        self.scheduler = start_scheduler(settings, config)

    def __del__(self):
        self.scheduler.stop()

    def alive(self) -> bool:
        return self.scheduler.running()


def scheduler(args: dict | None = None):
    """Serve application builder for the fine-tuning scheduler (no HTTP route: deploy it with route_prefix null)."""
    settings, config = _settings()
    options = stable_node_options(cluster_resources())
    return FinetuneScheduler.options(ray_actor_options=options).bind(settings, config)
