"""Alembic migrations. The configuration is built here in code (no alembic.ini), so `clickmask db ...` works
from any working directory and the installed package carries everything it needs."""
from __future__ import annotations

from pathlib import Path

from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for this package's migrations; without a URL, env.py takes CLICKMASK_DATABASE_URL."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    if database_url is not None:
        # Through attributes rather than set_main_option: ini values are %-interpolated and URLs contain %.
        config.attributes["database_url"] = database_url
    return config
