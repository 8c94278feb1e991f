"""`clickmask serve`: start (or join) Ray, deploy the backend, print what to paste into Label Studio."""
from __future__ import annotations

import argparse
import os
import sys
import time

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object" background="#FF0000"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true" background="#000000" showInline="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Object" smart="true" background="#000000" showInline="true"/></RectangleLabels>
</View>"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the Label Studio ML backend on Ray Serve",
                       description="Starts a local Ray (or joins RAY_ADDRESS), deploys the backend and keeps "
                                   "serving until interrupted. Settings: CLICKMASK_* variables (see README).")
    p.add_argument("--host", default=os.environ.get("CLICKMASK_HOST", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to reach it from other machines)")
    p.add_argument("--port", type=int, default=int(os.environ.get("CLICKMASK_PORT", "9090")))
    p.add_argument("--model", default=os.environ.get("CLICKMASK_MODEL", "base"),
                   help="checkpoint to serve: base (bundled) or a path")
    p.add_argument("--replicas", type=int, default=int(os.environ.get("CLICKMASK_REPLICAS", "1")))
    p.add_argument("--max-replicas", type=int, default=int(os.environ.get("CLICKMASK_MAX_REPLICAS", "0")),
                   help="autoscale up to this many replicas under load (default: fixed --replicas)")
    p.add_argument("--ingress-replicas", type=int, default=int(os.environ.get("CLICKMASK_INGRESS_REPLICAS", "1")),
                   help="HTTP ingress replicas (about one per 50 clicks/s; orchestrator/deploy/scaling.md)")
    gpus = os.environ.get("CLICKMASK_GPUS_PER_REPLICA", "").strip()
    p.add_argument("--gpus-per-replica", type=float, default=float(gpus) if gpus else None,
                   help="GPUs (or a fraction) each replica asks for (default: one when the cluster has GPUs)")
    p.add_argument("--no-db", action="store_true", help="do not record clicks and annotations")
    p.set_defaults(handler=run)


def serve_config(args: argparse.Namespace):
    from integrations.images import ImageSettings
    from orchestrator.serving.app import ServeConfig
    from orchestrator.settings import Settings

    settings = Settings.from_env()
    user, password = os.environ.get("CLICKMASK_BASIC_AUTH_USER"), os.environ.get("CLICKMASK_BASIC_AUTH_PASSWORD")
    if bool(user) != bool(password):
        raise SystemExit("set both CLICKMASK_BASIC_AUTH_USER and CLICKMASK_BASIC_AUTH_PASSWORD, or neither")
    return settings, ServeConfig(
        checkpoint=args.model, model_version=base_version_name(args.model),
        replicas=args.replicas, max_replicas=args.max_replicas or None, gpus_per_replica=args.gpus_per_replica,
        ingress_replicas=args.ingress_replicas,
        images=ImageSettings.from_env(), database_url=None if args.no_db else settings.database_url,
        basic_auth=(user, password) if user else None, store_url=settings.store_url,
        s3_endpoint_url=settings.s3_endpoint_url, recorder_queue_size=settings.recorder_queue_size,
    )


def base_version_name(model: str) -> str:
    """The registry name of the checkpoint served as the base: "base" for the bundled one, else its file name."""
    return "base" if model == "base" else os.path.basename(model)


def migrate(database_url: str) -> None:
    from alembic import command

    from migrations import alembic_config

    command.upgrade(alembic_config(database_url), "head")


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from orchestrator.ray_runtime import start_ray
    from orchestrator.serving.app import APP_NAME, build_app

    settings, config = serve_config(args)
    if config.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(config.database_url)
    start_ray()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    scheduler = start_scheduler(settings, config) if config.database_url else None
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"\nclickmask is serving model {config.model_version} at http://{shown}:{args.port}")
    print("In Label Studio: Settings > Model > Connect Model, URL as above, Interactive preannotations on.")
    print("Labeling config for smart clicks:\n" + LABEL_CONFIG + "\n", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        if scheduler is not None:
            scheduler.stop()
        serve.shutdown()
    return 0


def start_scheduler(settings, config):
    """Fine-tuning runs beside serving: the scheduler thread lives in this process, the jobs on Ray."""
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.scheduler import RunnerConfig, Scheduler

    runner = RunnerConfig(store_url=settings.store_url, images=config.images, s3_endpoint_url=settings.s3_endpoint_url,
                          base_name=config.model_version,
                          base_checkpoint=(config.checkpoint if config.checkpoint == "base"
                                           else os.path.abspath(config.checkpoint)),
                          finetune=settings.finetune)
    ft = settings.finetune
    print(f"Fine-tuning: every {ft.every_annotations or 'off'} new annotations, every {ft.every_minutes or 'off'} "
          "minutes with new data, Label Studio's Start training, or `clickmask finetune --project P`.")
    return Scheduler(make_session_factory(make_engine(settings.database_url)), runner).start()
