"""Shared test fixtures, grouped by what they provide. Real components only: SQLite files, the PostgreSQL server
that CI starts (a missing server fails the run, it is never skipped) and moto's S3 server over HTTP."""
from __future__ import annotations

import json

import pytest

# --------------------------------------------------------------------------------------------------------------
# Storage: Label Studio request bodies recorded from a real Label Studio (kept beside the checkout, not copied).

from support import SHARED

REQUESTS = SHARED / "label_studio" / "requests"

# Tiers: a test is marked by the servers it needs, read from its fixtures, so a new test lands in the right tier
# without being told. The quick loop (`bash tests/run --quick`) leaves out Ray and Label Studio (and so the browser).
NEEDS = {"ray_cluster": "ray", "label_studio": "label_studio"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in NEEDS.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def ls_request():
    """Load one recorded Label Studio request body by file stem, e.g. ls_request("webhook_annotation_created");
    a fresh copy each time, so tests may edit it."""

    def load(name: str) -> dict:
        path = REQUESTS / f"{name}.json"
        if not path.is_file():
            pytest.fail(f"recorded Label Studio request missing: {path}")
        return json.loads(path.read_text())["body"]

    return load


# --------------------------------------------------------------------------------------------------------------
# Storage: databases. `database_url` runs a test once on SQLite and once on PostgreSQL, each time in an empty
# database; `session_factory` gives sessions on a database migrated to the latest revision.


@pytest.fixture(scope="session")
def postgres_database():
    """A database created for this test run and dropped at its end (so runs never collide)."""
    from sqlalchemy.exc import OperationalError

    from store_support import create_database, drop_database, postgres_server_url

    server = postgres_server_url()
    try:
        url = create_database(server)
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {server.render_as_string(hide_password=True)} "
            f"(set CLICKMASK_TEST_POSTGRES_URL or start the server): {exc.orig}",
            pytrace=False,
        )
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'clickmask.db'}"
        return
    from store_support import create_schema, drop_schema

    url = create_schema(request.getfixturevalue("postgres_database"))
    yield url.render_as_string(hide_password=False)
    drop_schema(url)


@pytest.fixture
def migrated_url(database_url) -> str:
    from alembic import command

    from migrations import alembic_config

    command.upgrade(alembic_config(database_url), "head")
    return database_url


@pytest.fixture
def engine(migrated_url):
    from orchestrator.db import make_engine

    engine = make_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine):
    from orchestrator.db import make_session_factory

    return make_session_factory(engine)


# --------------------------------------------------------------------------------------------------------------
# Storage: S3. One moto server over HTTP per test run, on a free loopback port; a fresh bucket per test.


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    from support import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials through the standard AWS variables; no config file of the machine is read."""
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_bucket(moto_endpoint, aws_env) -> str:
    import uuid

    import boto3

    name = f"clickmask-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------------------------------------------
# Label Studio edge (owned by the Label Studio / image-fetching work; ls_support.py has the details).
# One real Label Studio 1.23.2 per test run, installed once into a cached virtual environment outside the repo,
# on a free loopback port with a throwaway data directory; stopped at the end of the run.


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    from ls_support import LabelStudio, ensure_installed

    try:
        executable = ensure_installed()
    except Exception as exc:  # a harness that cannot run is a failure, never a skip
        pytest.fail(f"Label Studio could not be installed: {exc}", pytrace=False)
    studio = LabelStudio.start(executable, tmp_path_factory.mktemp("label-studio"))
    yield studio
    studio.stop()


@pytest.fixture
def ls_project(label_studio):
    """A fresh project with the standard smart-click config and one eval image: (project id, its tasks)."""
    from ls_support import STANDARD_CONFIG, eval_images

    project_id = label_studio.create_project(STANDARD_CONFIG)
    return project_id, label_studio.upload_images(project_id, eval_images(1))


# --------------------------------------------------------------------------------------------------------------
# Ray: one real local Ray and Ray Serve per test run, for every test that needs them. Local (address="local": a
# stray RAY_ADDRESS or a `ray start` elsewhere is never joined), bound to loopback, with its own temp dir and ports;
# shut down at the end of the run (never `ray stop`, which would stop every Ray on the machine). Defined here, once:
# a fixture imported into several modules would be a separate definition, and start once per module.


@pytest.fixture(scope="session")
def ray_cluster():
    import tempfile

    import ray

    from orchestrator.ray_runtime import start_ray

    temp_dir = tempfile.mkdtemp(prefix="cm-ray-test-")
    # Ray's workers inherit the environment Ray starts in: fake AWS credentials let replicas and jobs reach the
    # tests' moto servers; this process's own environment is restored.
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_AWS.items():
            env.setenv(name, value)
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

    from support import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"
