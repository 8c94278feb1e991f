"""Assembly of the Ray Serve application: the ingress bound to the model deployment."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from integrations.images import ImageSettings
from integrations.label_studio.protocol import MAX_BODY_BYTES
from integrations.polygons import PolygonOptions
from orchestrator.placement import cluster_resources, ingress_options, replica_actor_options
from orchestrator.registry import base_version_name
from orchestrator.settings import Settings, SettingsError
from integrations.env import EnvReader
from workers.serving import ClickModel

from .ingress import Backend, IngressOptions
from .metrics import MetricsBoard

APP_NAME = "clickmask"


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str = "base"  # "base" (the bundled model) or a checkpoint path visible to every replica
    model_version: str = "base"
    replicas: int = 1
    max_replicas: int | None = None  # with a maximum above `replicas`, Ray Serve autoscales between the two
    ingress_replicas: int = 1  # HTTP ingress replicas (each with its own recorder and image cache)
    target_ongoing_requests: float = 2.0
    # Add replicas soon (a burst of annotators is waiting), remove them late (a replica takes seconds to start).
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    gpus_per_replica: float | None = None  # None: one GPU per replica when the cluster has GPUs, else none
    cpus_per_replica: float = 1.0  # each replica computes with one torch thread
    images: ImageSettings = field(default_factory=ImageSettings)
    database_url: str | None = field(default=None, repr=False)  # may carry a password
    store_url: str | None = None  # where fine-tuned checkpoints are (replicas load them from there)
    s3_endpoint_url: str | None = None
    registry_ttl_s: float = 2.0
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    max_body_bytes: int = MAX_BODY_BYTES  # largest request body the ingress reads
    recorder_queue_size: int = 10_000  # per ingress: clicks waiting to be written before new ones are dropped
    polygons: PolygonOptions = field(default_factory=PolygonOptions)  # polygon answers, for PolygonLabels configs


def config_from_env(env: Mapping[str, str] | None = None, model: str | None = None, replicas: int | None = None,
                    max_replicas: int | None = None, ingress_replicas: int | None = None,
                    gpus_per_replica: float | None = None, record: bool = True) -> tuple[Settings, ServeConfig]:
    """The settings and the deployment that `clickmask serve` runs, from the CLICKMASK_* variables; the command's
    flags, where given (not None), take the place of theirs. The Serve config's builders (entrypoint.py) call it
    with none, so a deployed cluster serves what `clickmask serve` would with the same variables."""
    read = EnvReader(env)
    env = read.env
    number = lambda name, kind, given, default: given if given is not None else read.number(name, default, kind)
    settings = Settings.from_env(env)
    user, password = env.get("CLICKMASK_BASIC_AUTH_USER"), env.get("CLICKMASK_BASIC_AUTH_PASSWORD")
    if bool(user) != bool(password):
        raise SettingsError("set both CLICKMASK_BASIC_AUTH_USER and CLICKMASK_BASIC_AUTH_PASSWORD, or neither")
    model = model or read.text("CLICKMASK_MODEL") or "base"
    return settings, ServeConfig(
        checkpoint=model, model_version=base_version_name(model),
        replicas=number("CLICKMASK_REPLICAS", int, replicas, 1),
        max_replicas=number("CLICKMASK_MAX_REPLICAS", int, max_replicas, 0) or None,
        gpus_per_replica=number("CLICKMASK_GPUS_PER_REPLICA", float, gpus_per_replica, None),
        ingress_replicas=number("CLICKMASK_INGRESS_REPLICAS", int, ingress_replicas, 1),
        images=ImageSettings.from_env(env), database_url=settings.database_url if record else None,
        basic_auth=(user, password) if user else None, store_url=settings.store_url,
        s3_endpoint_url=settings.s3_endpoint_url, recorder_queue_size=settings.recorder_queue_size,
        polygons=PolygonOptions.from_env(env),
    )


def build_app(config: ServeConfig, cluster: dict[str, float] | None = None):
    """The bound application, ready for serve.run. `cluster`: the Ray cluster's resources (orchestrator.placement),
    read from the connected cluster when not given."""
    cluster = cluster_resources() if cluster is None else cluster
    model_options: dict = {
        "user_config": {"checkpoint": config.checkpoint, "version": config.model_version},
        "ray_actor_options": replica_actor_options(cluster, config.gpus_per_replica, config.cpus_per_replica),
    }
    if config.max_replicas and config.max_replicas > config.replicas:
        model_options["autoscaling_config"] = {
            "min_replicas": config.replicas, "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
            "upscale_delay_s": config.upscale_delay_s, "downscale_delay_s": config.downscale_delay_s,
        }
    else:
        model_options["num_replicas"] = config.replicas
    model = ClickModel.options(**model_options).bind(config.checkpoint, config.model_version, config.store_url,
                                                     config.s3_endpoint_url)
    options = IngressOptions(images=config.images, database_url=config.database_url, basic_auth=config.basic_auth,
                             registry_ttl_s=config.registry_ttl_s, max_body_bytes=config.max_body_bytes,
                             recorder_queue_size=config.recorder_queue_size, polygons=config.polygons)
    ingress = Backend.options(num_replicas=config.ingress_replicas, ray_actor_options=ingress_options(cluster))
    # Several ingress replicas share their /metrics figures through a board (orchestrator.serving.metrics).
    board = None
    if config.ingress_replicas > 1:
        board = MetricsBoard.options(ray_actor_options={**ingress_options(cluster), "num_cpus": 0}).bind()
    return ingress.bind(model, options, config.model_version, board)
