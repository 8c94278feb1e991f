"""Settings read once from CLICKMASK_* environment variables into a frozen dataclass.

Every field has a default that gives the one-machine setup (a SQLite file and a local folder under the data
directory), so nothing needs configuring to start. Later features add fields here with their own defaults.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SettingsError(ValueError):
    """A CLICKMASK_* variable has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # repr=False: a database URL may carry a password, and settings end up in logs.
    database_url: str = field(repr=False)
    store_url: str
    s3_endpoint_url: str | None = None
    recorder_queue_size: int = 10_000

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password masked, for messages and logs."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        # Absolute from the start, so the same settings mean the same files whatever the working directory.
        data_dir = Path(get("CLICKMASK_DATA_DIR") or "~/.clickmask").expanduser().absolute()
        database_url = get("CLICKMASK_DATABASE_URL") or f"sqlite:///{data_dir / 'clickmask.db'}"
        try:
            make_url(database_url)
        except ArgumentError as exc:
            raise SettingsError(f"CLICKMASK_DATABASE_URL is not an SQLAlchemy URL: {exc}") from None
        store_url = get("CLICKMASK_STORE_URL") or str(data_dir / "store")
        queue_size = get("CLICKMASK_RECORDER_QUEUE_SIZE") or "10000"
        try:
            recorder_queue_size = int(queue_size)
        except ValueError:
            raise SettingsError(f"CLICKMASK_RECORDER_QUEUE_SIZE must be an integer, not {queue_size!r}") from None
        if recorder_queue_size < 1:
            raise SettingsError("CLICKMASK_RECORDER_QUEUE_SIZE must be at least 1")
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            store_url=store_url,
            s3_endpoint_url=get("CLICKMASK_S3_ENDPOINT_URL"),
            recorder_queue_size=recorder_queue_size,
        )
