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


def start_ray(address: str | None = None, num_cpus: int | None = None, temp_dir: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one bound to 127.0.0.1."""
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
