"""Migrations up and down on SQLite and PostgreSQL, the models checked against them, and the `clickmask db` command."""
import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from migrations import alembic_config
from orchestrator.cli import main
from orchestrator.db import Base, make_engine
from support import free_port

TABLES = {
    "projects",
    "images",
    "interaction_sessions",
    "clicks",
    "predicted_masks",
    "annotations",
    "annotation_masks",
    "model_versions",
    "training_jobs",
}
# The reads that fine-tuning, export and the effort figures make must be served by an index.
INDEXES = {
    "annotations": ["project_id", "updated_at"],
    "clicks": ["session_id", "seq"],
    "images": ["project_id", "content_hash"],
}


HEAD = "0003"  # the latest revision


def tables(url):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names()), inspect(connection)
    finally:
        engine.dispose()


def diff(url, metadata=Base.metadata):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def revision(url):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_index_and_downgrade_removes_them(database_url):
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        inspector = inspect(connection)
        assert TABLES <= set(inspector.get_table_names())
        for table, columns in INDEXES.items():
            indexed = [index["column_names"] for index in inspector.get_indexes(table)]
            assert columns in indexed, f"{table} has no index on {columns}: {indexed}"
    engine.dispose()
    assert revision(database_url) == HEAD

    command.downgrade(config, "base")
    names, _ = tables(database_url)
    assert not (TABLES & names)
    assert revision(database_url) is None

    command.upgrade(config, "head")  # and back up again: downgrade left nothing behind that blocks it
    assert TABLES <= tables(database_url)[0]


def test_models_match_the_migrations(migrated_url):
    assert diff(migrated_url) == []


def test_drift_check_sees_a_column_missing_from_the_migrations(migrated_url):
    # The no-drift test above is only worth something if the comparison notices a difference.
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    metadata.tables["clicks"].append_column(Column("pressure", Integer, nullable=True))
    assert [entry[0] for entry in diff(migrated_url, metadata)] == ["add_column"]


def test_cli_upgrade_current_downgrade_from_another_directory(database_url, monkeypatch, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", database_url)

    assert main(["db", "current"]) == 0
    assert "current: none" in capsys.readouterr().out

    assert main(["db", "upgrade"]) == 0
    assert f"current: {HEAD}" in capsys.readouterr().out
    assert TABLES <= tables(database_url)[0]

    assert main(["db", "downgrade", "base"]) == 0
    assert "current: none" in capsys.readouterr().out
    assert not (TABLES & tables(database_url)[0])
    assert os.listdir(elsewhere) == []  # no alembic.ini or database file dropped into the working directory


def test_installed_command_finds_its_migrations_from_any_directory(tmp_path):
    # As a user runs it: a separate process, another working directory, only the environment variable set.
    env = dict(os.environ, CLICKMASK_DATABASE_URL=f"sqlite:///{tmp_path / 'data' / 'c.db'}")
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "db", "upgrade"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"current: {HEAD}" in result.stdout
    assert TABLES <= tables(env["CLICKMASK_DATABASE_URL"])[0]


def test_cli_unknown_revision_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    assert main(["db", "upgrade", "nosuchrev"]) == 2
    assert "nosuchrev" in capsys.readouterr().err


def test_cli_unreachable_database_is_a_clear_error_without_password(monkeypatch, capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", f"postgresql://u:hunter2@127.0.0.1:{port}/x")
    assert main(["db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert "cannot use the database" in err and "refused" in err.lower()
    assert "hunter2" not in err and "Traceback" not in err


def test_downgrade_needs_a_revision():
    with pytest.raises(SystemExit):
        main(["db", "downgrade"])


def test_the_database_refuses_a_second_queued_or_running_job_of_a_project(migrated_url):
    from sqlalchemy.exc import IntegrityError

    from orchestrator.db import Project, TrainingJob, make_session_factory

    engine = make_engine(migrated_url)
    factory = make_session_factory(engine)
    with factory.begin() as s:
        a, b = Project(ls_project_id=1), Project(ls_project_id=2)
        s.add_all([a, b])
        s.flush()
        s.add_all([TrainingJob(project_id=a.id, state="queued"), TrainingJob(project_id=a.id, state="running"),
                   TrainingJob(project_id=b.id, state="queued"), TrainingJob(project_id=a.id, state="failed"),
                   TrainingJob(project_id=a.id, state="failed")])
    for state in ("queued", "running"):
        with pytest.raises(IntegrityError):
            with factory.begin() as s:
                s.add(TrainingJob(project_id=a.id, state=state))
    engine.dispose()
