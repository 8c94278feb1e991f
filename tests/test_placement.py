"""Placement on a cluster (orchestrator.placement) as the built application carries it: the ingress and the
scheduler only on nodes that stay, replicas on GPUs when the cluster has them, jobs in job slots. Pure logic on
resource tables; the two-node proof on a real Ray cluster is tests/bench_autoscale.py."""
from __future__ import annotations

from orchestrator.placement import (INGRESS_RESOURCE, JOBS_RESOURCE, REPLICA_RESOURCE, job_options, job_slots,
                                   replica_actor_options)
from orchestrator.serving.app import ServeConfig, build_app

FLEET = {"CPU": 40.0, "GPU": 4.0, INGRESS_RESOURCE: 2.0, JOBS_RESOURCE: 4.0, REPLICA_RESOURCE: 4.0}
ONE_MACHINE = {"CPU": 2.0}


def deployments(app) -> tuple:
    """(ingress, model) deployments of a built application."""
    ingress = app._bound_deployment
    return ingress, ingress.init_args[0]._bound_deployment


def test_on_a_fleet_the_ingress_stays_on_stable_nodes_and_replicas_take_a_gpu_each():
    config = ServeConfig(replicas=2, max_replicas=6, ingress_replicas=3)
    ingress, model = deployments(build_app(config, cluster=FLEET))
    assert ingress.ray_actor_options["resources"] == {INGRESS_RESOURCE: 0.01}
    assert ingress.ray_actor_options["num_cpus"] == 1  # spread over the nodes that stay, never crowded by jobs
    assert ingress._deployment_config.num_replicas == 3
    assert model.ray_actor_options["num_gpus"] == 1.0 and model.ray_actor_options["num_cpus"] == 1.0
    assert model.ray_actor_options["resources"] == {REPLICA_RESOURCE: 0.01}  # on the replica group only
    scaling = model._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (2, 6, 2.0)


def test_on_one_machine_nothing_asks_for_what_the_machine_lacks():
    ingress, model = deployments(build_app(ServeConfig(), cluster=ONE_MACHINE))
    assert "resources" not in ingress.ray_actor_options and ingress.ray_actor_options["num_cpus"] == 0
    assert model.ray_actor_options["num_gpus"] == 0.0 and "resources" not in model.ray_actor_options
    assert model._deployment_config.autoscaling_config is None  # no maximum: a fixed replica count


def test_an_explicit_gpu_share_wins_over_the_cluster():
    assert replica_actor_options(FLEET, 0.0, 1.0)["num_gpus"] == 0.0  # CPU replicas on a GPU cluster
    assert replica_actor_options(FLEET, 0.25, 1.0)["num_gpus"] == 0.25  # four replicas per GPU


def test_jobs_take_a_job_slot_only_where_slots_are_declared():
    assert job_options(FLEET, 1.0) == {"num_cpus": 1.0, "resources": {JOBS_RESOURCE: 1}}
    assert job_options(ONE_MACHINE, 1.0) == {"num_cpus": 1.0}
    assert (job_slots(FLEET), job_slots(ONE_MACHINE)) == (4, 1)


def test_the_scheduler_stays_on_stable_nodes_without_taking_a_cpu(monkeypatch, tmp_path):
    from orchestrator.serving import entrypoint

    monkeypatch.setenv("CLICKMASK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(entrypoint, "cluster_resources", lambda: FLEET)  # the builder reads the cluster it is on
    assert entrypoint.scheduler({})._bound_deployment.ray_actor_options == {
        "num_cpus": 0, "resources": {INGRESS_RESOURCE: 0.01}}
    monkeypatch.setattr(entrypoint, "cluster_resources", lambda: ONE_MACHINE)
    assert entrypoint.scheduler({})._bound_deployment.ray_actor_options == {"num_cpus": 0}
