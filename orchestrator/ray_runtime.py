"""Starting or joining Ray. The embedded default is a local Ray whose listeners stay on loopback; with an address
(or RAY_ADDRESS) clickmask joins an existing cluster instead."""
from __future__ import annotations

import os
import tempfile

# Every Ray worker of ours computes with one thread per CPU it asked for; spin-waiting OpenMP threads would steal
# the other cores from the replicas beside them.
STARTUP_ATTEMPTS = 3
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
              # Serve gives a starting HTTP proxy 3 checks of 5 s, then kills it and starts another; on a small
              # machine busy with training that loop can go on forever. 30 s per check costs nothing when idle.
              "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}


def direct_ingress_env(port: int) -> dict[str, str]:
    """Ray Serve's direct ingress, for a local Ray with one ingress replica: that replica serves HTTP on `port`
    itself, so no click passes through Serve's HTTP proxy. Through the proxy, each request costs the proxy's own HTTP
    handling, a call from the proxy to the ingress and another from the ingress back to the proxy for the body:
    measured on a 2-core machine, 8 ms of a click's 60 ms at the median and 8 ms of CPU per click
    (orchestrator/serving/README.md). Serve still starts its proxy, on another port, where nothing is sent."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # the range ends before its maximum
            # Nothing balances load in front of the replica, so a stopping one need not wait for a balancer to
            # notice, and a restarted one takes the port back at once.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def start_serving(host: str, port: int, ingress_replicas: int = 1, address: str | None = None,
                  temp_dir: str | None = None, direct: bool = True) -> bool:
    """Ray (local, or the cluster at `address` or RAY_ADDRESS) and Ray Serve answering HTTP at host:port. A local Ray
    with one ingress replica is started with direct ingress (direct_ingress_env) unless `direct` is False (to
    compare); otherwise Serve's HTTP proxy listens on the port and passes requests on. True when direct."""
    import socket

    from ray import serve

    direct = direct and not (address or os.environ.get("RAY_ADDRESS")) and ingress_replicas == 1
    start_ray(address, temp_dir=temp_dir, env=direct_ingress_env(port) if direct else None)
    proxy_port = port
    if direct:  # the idle proxy gets a free port of its own
        with socket.socket() as probe:
            probe.bind((host, 0))
            proxy_port = probe.getsockname()[1]
    serve.start(http_options={"host": host, "port": proxy_port})
    return direct


def start_ray(address: str | None = None, num_cpus: int | None = None, temp_dir: str | None = None,
              env: dict[str, str] | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one bound to 127.0.0.1. `env`: more
    variables for a local Ray's processes (a joined cluster's are its own)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    # address="local" never joins a cluster that happens to run on this machine; short temp dirs keep Ray's
    # socket paths under the operating system's length limit.
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="cm-ray-")
    for name, value in WORKER_ENV.items():  # the local raylet, and so every worker, inherits these
        os.environ.setdefault(name, value)
    os.environ.update(env or {})
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
            return
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register; on a starved machine that can pass. Start again clean.
            ray.shutdown()
            if attempt == STARTUP_ATTEMPTS or "timed out during startup" not in str(exc):
                raise
