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
    if not ray.is_initialized():
        return  # another importing module's copy of this fixture shut it down (serve.shutdown would start a Ray)
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


_SERVE_URL: list[str] = []


@pytest.fixture(scope="session")
def serve_http(ray_cluster) -> str:
    """Ray Serve started with its HTTP proxy on a free loopback port; returns the base URL.

    A fixture imported into several modules is a separate definition in each, so this runs once per importing
    module: Serve is started the first time only (a second serve.start is ignored, and its port has no listener)."""
    from ray import serve

    if _SERVE_URL:
        return _SERVE_URL[0]
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except Exception:
        # Serve waits a fixed 60 s for its HTTP proxy; a starved machine can miss that once. Start again.
        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    _SERVE_URL.append(f"http://127.0.0.1:{port}")
    return _SERVE_URL[0]
