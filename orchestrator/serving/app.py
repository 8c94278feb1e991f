"""Assembly of the Ray Serve application: the ingress bound to the model deployment."""
from __future__ import annotations

from dataclasses import dataclass, field

from integrations.images import ImageSettings
from workers.serving import ClickModel

from .ingress import Backend, IngressOptions

APP_NAME = "clickmask"


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str = "base"  # "base" (the bundled model) or a checkpoint path visible to every replica
    model_version: str = "base"
    replicas: int = 1
    max_replicas: int | None = None  # with a maximum above `replicas`, Ray Serve autoscales between the two
    target_ongoing_requests: float = 2.0
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0  # each replica computes with one torch thread
    images: ImageSettings = field(default_factory=ImageSettings)
    database_url: str | None = None
    store_url: str | None = None  # where fine-tuned checkpoints are (replicas load them from there)
    s3_endpoint_url: str | None = None
    registry_ttl_s: float = 2.0
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)


def build_app(config: ServeConfig):
    """The bound application, ready for serve.run."""
    model_options: dict = {
        "user_config": {"checkpoint": config.checkpoint, "version": config.model_version},
        "ray_actor_options": {"num_cpus": 0 if config.gpus_per_replica else config.cpus_per_replica,
                              "num_gpus": config.gpus_per_replica},
    }
    if config.max_replicas and config.max_replicas > config.replicas:
        model_options["autoscaling_config"] = {
            "min_replicas": config.replicas, "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        }
    else:
        model_options["num_replicas"] = config.replicas
    model = ClickModel.options(**model_options).bind(config.checkpoint, config.model_version, config.store_url,
                                                     config.s3_endpoint_url)
    options = IngressOptions(images=config.images, database_url=config.database_url, basic_auth=config.basic_auth,
                             registry_ttl_s=config.registry_ttl_s)
    return Backend.bind(model, options, config.model_version)
