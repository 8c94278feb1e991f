"""`clickmask serve`: start (or join) Ray, deploy the backend, print what to paste into Label Studio."""
from __future__ import annotations

import argparse
import os
import signal
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
    # Defaults are None: the CLICKMASK_* variable, else its default, comes in where a flag is not given
    # (orchestrator.serving.app.config_from_env, which the Serve config's builders use too).
    p.add_argument("--model", help="checkpoint to serve: base (bundled) or a path (CLICKMASK_MODEL)")
    p.add_argument("--replicas", type=int, help="model replicas (CLICKMASK_REPLICAS, default 1)")
    p.add_argument("--max-replicas", type=int,
                   help="autoscale up to this many replicas under load (CLICKMASK_MAX_REPLICAS; default: fixed)")
    p.add_argument("--ingress-replicas", type=int,
                   help="HTTP ingress replicas, about one per 50 clicks/s (CLICKMASK_INGRESS_REPLICAS, default 1)")
    p.add_argument("--gpus-per-replica", type=float,
                   help="GPUs (or a fraction) each replica asks for (CLICKMASK_GPUS_PER_REPLICA; default: one "
                        "when the cluster has GPUs)")
    p.add_argument("--no-db", action="store_true", help="do not record clicks and annotations")
    p.set_defaults(handler=run)


def serve_config(args: argparse.Namespace):
    from orchestrator.serving.app import config_from_env

    return config_from_env(model=args.model, replicas=args.replicas, max_replicas=args.max_replicas,
                           ingress_replicas=args.ingress_replicas, gpus_per_replica=args.gpus_per_replica,
                           record=not args.no_db)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from orchestrator.commands.common import migrate
    from orchestrator.ray_runtime import start_serving
    from orchestrator.serving.app import APP_NAME, build_app

    settings, config = serve_config(args)
    if config.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(config.database_url)
    start_serving(args.host, args.port, config.ingress_replicas)
    # SIGTERM (systemd, Kubernetes) stops like Ctrl-C. Set after Ray's start, which installs handlers of its own
    # that dump a stack and exit with the signal's number.
    signal.signal(signal.SIGTERM, _interrupt)
    scheduler = None
    try:
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        scheduler = start_scheduler(settings, config) if config.database_url else None
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"\nclickmask is serving model {config.model_version} at http://{shown}:{args.port}")
        print("In Label Studio: Settings > Model > Connect Model, URL as above, Interactive preannotations on.")
        print("Labeling config for smart clicks (for polygon answers, PolygonLabels in place of BrushLabels):\n"
              + LABEL_CONFIG + "\n", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: writing the clicks answered so far, then stopping Ray", file=sys.stderr, flush=True)
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the stop short
            signal.signal(stop_signal, signal.SIG_IGN)
        if scheduler is not None:
            scheduler.stop()
        serve.shutdown()  # each ingress's recorder writes what it holds as its replica stops
        ray.shutdown()  # the local Ray this command started, with its processes
    print("stopped", file=sys.stderr)
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
