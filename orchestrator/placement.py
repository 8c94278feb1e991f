"""Where each part of clickmask runs on a Ray cluster, decided from the resources the cluster declares.

A fleet has nodes that stay (the head, or a CPU group) and nodes that come and go (a GPU group scaled with load,
spot instances). The HTTP ingress, the fine-tuning scheduler and the jobs must not live on a node that may go away;
model replicas may. Nodes say what they are for with custom resources:

- INGRESS_RESOURCE on the nodes that stay: the ingress and the scheduler require a sliver of it, so they are only
  placed there (the ingress also asks for a CPU there, the scheduler none);
- REPLICA_RESOURCE on the nodes meant for model replicas (the GPU group): where a cluster declares it, replicas
  require a sliver of it, so they never take the CPUs the ingress and jobs were given;
- JOBS_RESOURCE on the nodes that run fine-tuning, one unit per job the node takes at once: a job requires one unit,
  so jobs queue in Ray for a free slot instead of crowding the CPUs that serving needs.

A cluster that declares neither (one machine, or a cluster set up without them) gets the one-machine behaviour:
everything may run anywhere. Replicas ask for one GPU each when the cluster has GPUs, unless told otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping

INGRESS_RESOURCE = "clickmask_ingress"
JOBS_RESOURCE = "clickmask_jobs"
REPLICA_RESOURCE = "clickmask_replicas"
SHARE = 0.01  # of one unit: a node declaring 1 unit can hold up to 100 such actors; CPUs and GPUs limit them first


def cluster_resources() -> dict[str, float]:
    """The resources of the Ray cluster this process is connected to (empty when Ray is not initialized)."""
    import ray

    return dict(ray.cluster_resources()) if ray.is_initialized() else {}


def replica_gpus(cluster: Mapping[str, float], requested: float | None) -> float:
    """GPUs per model replica: as requested, else one when the cluster has GPUs and none when it has not."""
    if requested is not None:
        return requested
    return 1.0 if cluster.get("GPU", 0) >= 1 else 0.0


def replica_actor_options(cluster: Mapping[str, float], gpus: float | None, cpus: float) -> dict:
    """A GPU replica still asks for its CPU: guidance maps, the mask at full size and its packing run there."""
    options: dict = {"num_cpus": cpus, "num_gpus": replica_gpus(cluster, gpus)}
    if cluster.get(REPLICA_RESOURCE, 0) > 0:
        options["resources"] = {REPLICA_RESOURCE: SHARE}
    return options


def stable_node_options(cluster: Mapping[str, float], cpus: float = 0) -> dict:
    """Only on nodes that stay, where the cluster says which they are."""
    options: dict = {"num_cpus": cpus}
    if cluster.get(INGRESS_RESOURCE, 0) > 0:
        options["resources"] = {INGRESS_RESOURCE: SHARE}
    return options


def ingress_options(cluster: Mapping[str, float]) -> dict:
    """An ingress replica works about as hard per click as a model replica (parsing, brush RLE, recording; measured
    by tests/bench_autoscale.py), so on a fleet it reserves a CPU: its replicas spread over the nodes that stay,
    and jobs cannot crowd them. On one machine it reserves none, as before: it shares the cores with everything."""
    return stable_node_options(cluster, cpus=1 if cluster.get(INGRESS_RESOURCE, 0) > 0 else 0)


def job_options(cluster: Mapping[str, float], cpus: float) -> dict:
    """For a fine-tuning job: its CPUs, and a job slot where the cluster declares them."""
    options: dict = {"num_cpus": cpus}
    if cluster.get(JOBS_RESOURCE, 0) > 0:
        options["resources"] = {JOBS_RESOURCE: 1}
    return options


def job_slots(cluster: Mapping[str, float]) -> int:
    """Fine-tuning jobs the cluster takes at once: its job slots, or one where it declares none."""
    return max(1, int(cluster.get(JOBS_RESOURCE, 0)))
