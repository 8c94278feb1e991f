"""The deployment files under orchestrator/deploy/ agree with the code: the Serve applications they name import and
build, every setting they set is one the code reads (and the secrets the fleet needs are set), and the node groups
declare the resources orchestrator.placement places the ingress, the replicas and the jobs by."""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.placement import INGRESS_RESOURCE, JOBS_RESOURCE, REPLICA_RESOURCE

DEPLOY = Path(__file__).resolve().parents[1] / "orchestrator" / "deploy"
REQUIRED = {"CLICKMASK_DATABASE_URL", "CLICKMASK_STORE_URL"}  # without them each replica would keep its own files


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def rayservice() -> dict:
    (service,) = [d for d in load_all("rayservice.yaml") if d["kind"] == "RayService"]
    return service


def start_params_resources(group: dict) -> dict:
    """KubeRay puts rayStartParams.resources into the `ray start --resources=...` shell command as written: a
    double-quoted JSON string, unquoted by the shell."""
    raw = group.get("rayStartParams", {}).get("resources")
    return json.loads(raw[1:-1].replace('\\"', '"')) if raw else {}


class RecordingEnv(dict):
    """os.environ stand-in that remembers every name the code looks up."""

    def __init__(self, values):
        super().__init__(values)
        self.read = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.fixture
def names_read(monkeypatch, tmp_path):
    """The environment variable names `clickmask serve` (and so the deployed applications) reads, found by running
    its configuration code on a recording environment."""
    from orchestrator.cli import build_parser
    from orchestrator.commands.serve import serve_config

    env = RecordingEnv({"CLICKMASK_DATA_DIR": str(tmp_path)})
    monkeypatch.setattr(os, "environ", env)
    serve_config(build_parser().parse_args(["serve"]))
    assert "CLICKMASK_DATABASE_URL" in env.read  # the recording works
    return env.read


def test_the_serve_config_is_the_same_in_both_deployments_and_its_apps_import():
    standalone = load_all("serve.yaml")[0]
    assert yaml.safe_load(rayservice()["spec"]["serveConfigV2"]) == standalone
    by_name = {app["name"]: app for app in standalone["applications"]}
    assert by_name["clickmask"]["route_prefix"] == "/"
    assert by_name["clickmask-finetune"]["route_prefix"] is None
    for app in standalone["applications"]:
        module, attribute = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), app["import_path"]


def test_the_backend_builder_deploys_what_clickmask_serve_deploys(monkeypatch, tmp_path):
    from orchestrator.serving import entrypoint

    monkeypatch.setenv("CLICKMASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKMASK_REPLICAS", "2")
    monkeypatch.setenv("CLICKMASK_MAX_REPLICAS", "5")
    monkeypatch.setenv("CLICKMASK_GPUS_PER_REPLICA", "0.5")
    monkeypatch.setenv("CLICKMASK_INGRESS_REPLICAS", "3")
    app = entrypoint.backend({})
    assert app._bound_deployment._deployment_config.num_replicas == 3
    model = app._bound_deployment.init_args[0]._bound_deployment
    scaling = model._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (2, 5)
    assert model.ray_actor_options["num_gpus"] == 0.5
    assert (tmp_path / "clickmask.db").is_file()  # migrated before serving, as `clickmask serve` does


def test_every_setting_in_the_deployment_files_is_one_the_code_reads(names_read):
    config_map = next(d for d in load_all("rayservice.yaml") if d["kind"] == "ConfigMap")
    secret = load_all("secrets.example.yaml")[0]
    env_file = [line.split("=", 1)[0] for line in (DEPLOY / "cluster.env.example").read_text().splitlines()
                if line and not line.startswith("#")]
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}  # boto3's own
    for where, names in [("config map", set(config_map["data"])), ("secret", set(secret["stringData"])),
                         ("cluster.env.example", set(env_file))]:
        unknown = names - names_read - aws
        assert not unknown, f"{where} sets variables nothing reads: {unknown}"
    assert REQUIRED <= set(config_map["data"]) | set(secret["stringData"])
    assert REQUIRED <= set(env_file)
    assert "CLICKMASK_DATABASE_URL" in secret["stringData"]  # the password stays in the secret


def test_every_container_gets_the_settings_from_the_secret_and_config_map():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
            assert refs == {"secretRef": "clickmask-secrets", "configMapRef": "clickmask-config"}


def test_kuberay_groups_declare_the_resources_placement_uses():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    workers = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert start_params_resources(head).get(INGRESS_RESOURCE, 0) > 0
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replica, no job on the head
    cpu = start_params_resources(workers["cpu"])
    assert cpu.get(INGRESS_RESOURCE, 0) > 0 and cpu.get(JOBS_RESOURCE, 0) >= 1
    assert workers["cpu"]["minReplicas"] >= 1  # the ingress' group never scales to nothing
    gpu = workers["gpu"]
    assert set(start_params_resources(gpu)) == {REPLICA_RESOURCE}  # replicas here, and nothing else
    assert REPLICA_RESOURCE not in cpu and REPLICA_RESOURCE not in start_params_resources(head)
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"]


def test_launcher_node_types_declare_the_resources_placement_uses():
    config = load_all("cluster.yaml")[0]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get(INGRESS_RESOURCE, 0) > 0
    assert types["cpu"]["resources"].get(JOBS_RESOURCE, 0) >= 1 and types["cpu"]["min_workers"] >= 1
    assert types["gpu"]["resources"].get("GPU", 0) >= 1
    assert {k for k in types["gpu"]["resources"] if k.startswith("clickmask")} == {REPLICA_RESOURCE}
    assert all(REPLICA_RESOURCE not in types[t]["resources"] for t in types if t != "gpu")
    # Every Ray process starts with the settings file sourced, so replicas and jobs see the same database.
    mounted = {Path(k).name for k in config["file_mounts"]}
    assert "clickmask.env" in mounted
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if re.search(r"\bray start\b", command):
            assert ". ~/clickmask.env" in command


def test_the_scheduler_application_runs_queued_jobs_on_ray(serve_http, monkeypatch, tmp_path):
    """Deployed as the Serve config deploys it: settings read where the application is built, carried to the
    replica; a job queued in the database is picked up (here it fails fast: the project has no annotations)."""
    import time

    from ray import serve

    from orchestrator import jobs
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.serving import entrypoint

    url = f"sqlite:///{tmp_path / 'clickmask.db'}"
    monkeypatch.setenv("CLICKMASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", url)
    entrypoint.backend({})  # migrates the database, as deploying the backend does
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        job = jobs.enqueue(factory, 5, "webhook")
        serve.run(entrypoint.scheduler({}), name="finetune-test", route_prefix=None)
        try:
            deadline = time.monotonic() + 120  # the scheduler looks for queued jobs every 2 s once it runs
            while jobs.get(factory, job).state in jobs.ACTIVE:
                assert time.monotonic() < deadline, "the deployed scheduler never ran the queued job"
                time.sleep(0.5)
            failed = jobs.get(factory, job)
            assert failed.state == "failed" and "annotated images" in failed.error
        finally:
            serve.delete("finetune-test")
    finally:
        engine.dispose()
