"""One real local Ray and Ray Serve per test run, for every test that needs them.

Import the fixtures into a test module (`from ray_support import ray_cluster, serve_http`); pytest keys a fixture's
session scope by its definition, so every module shares the same cluster. The cluster is local (address="local":
a stray RAY_ADDRESS or a `ray start` elsewhere is never joined), bound to loopback, with its own temp dir and
ports; it is shut down at the end of the run (never `ray stop`, which would stop every Ray on the machine).
"""
from __future__ import annotations

import tempfile

import pytest

from store_support import free_port


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from orchestrator.ray_runtime import start_ray

    temp_dir = tempfile.mkdtemp(prefix="cm-ray-test-")
    start_ray(num_cpus=2, temp_dir=temp_dir)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_http(ray_cluster) -> str:
    """Ray Serve started with its HTTP proxy on a free loopback port; returns the base URL."""
    from ray import serve

    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except Exception:
        # Serve waits a fixed 60 s for its HTTP proxy; a starved machine can miss that once. Start again.
        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"
