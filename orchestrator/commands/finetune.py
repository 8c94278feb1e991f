"""`clickmask finetune --project P`: queue a fine-tuning job for a project and see it through.

The job runs on Ray (a local one, or RAY_ADDRESS) from this process, unless a `clickmask serve` scheduler claims it
first, in which case this waits for it. Either way the outcome is printed and recorded in the database.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a project's model on its annotations now",
                       description="Queues a job (or joins the one queued), runs it on Ray, and prints whether the "
                                   "candidate was promoted. Settings: CLICKMASK_FINETUNE_* (see README).")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--model", default=os.environ.get("CLICKMASK_MODEL", "base"),
                   help="the base checkpoint the project's line starts from: base (bundled) or a path")
    p.add_argument("--no-wait", action="store_true", help="only queue the job (a running `clickmask serve` runs it)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from integrations.images import ImageSettings
    from orchestrator import jobs
    from orchestrator.commands.common import open_database
    from orchestrator.registry import base_version_name
    from orchestrator.scheduler import RunnerConfig, Scheduler

    settings, factory = open_database(migrated=True)
    job_id = jobs.enqueue(factory, args.project, "cli")
    print(f"job {job_id} queued for project {args.project}", flush=True)
    if args.no_wait:
        return 0
    from orchestrator.ray_runtime import start_ray

    start_ray()
    runner = RunnerConfig(store_url=settings.store_url, images=ImageSettings.from_env(),
                          s3_endpoint_url=settings.s3_endpoint_url, base_name=base_version_name(args.model),
                          base_checkpoint=args.model if args.model == "base" else os.path.abspath(args.model),
                          finetune=settings.finetune)
    scheduler = Scheduler(factory, runner)
    while True:
        job = jobs.get(factory, job_id)
        if job.state not in jobs.ACTIVE:
            break
        if job.state == "queued" and jobs.claim(factory, job_id):
            print("running it here, on Ray", flush=True)
            scheduler.run(job_id)
            continue
        jobs.fail_stale(factory, runner.stale_after_s)
        time.sleep(2)
    print(report(factory, job))
    return 0 if job.state == "succeeded" else 1


def report(factory, job) -> str:
    from orchestrator.db import ModelVersion

    lines = [f"job {job.id}: {job.state}"]
    if job.error:
        lines.append(f"error: {job.error}")
    details = job.details or {}
    if "decision" in details:
        with factory() as session:
            version = session.get(ModelVersion, job.result_version_id)
        lines.append(f"version {version.name}: {version.status} ({details['decision']['reason']})")
    for key in ("split", "objects", "seconds"):
        if key in details:
            lines.append(f"{key}: {json.dumps(details[key])}")
    return "\n".join(lines)
