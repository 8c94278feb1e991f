"""Settings read once from CLICKMASK_* environment variables into a frozen dataclass.

Every field has a default that gives the one-machine setup (a SQLite file and a local folder under the data
directory), so nothing needs configuring to start. Later features add fields here with their own defaults.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from integrations.env import EnvReader, SettingsError


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning triggers and job size (CLICKMASK_FINETUNE_*). A trigger of 0 is off; the Label Studio button
    and `clickmask finetune` work whatever these say."""

    every_annotations: int = 50  # a job after this many new submitted annotations in a project
    every_minutes: float = 60.0  # a job when a project has new annotations and its last job is this old
    samples: int = 2000  # training samples per job (iterative clicks, as in base training)
    lr: float = 5e-4  # peak learning rate (cosine schedule, short warm-up); base training uses 1e-3
    val_percent: int = 20  # share of a project's images kept for validating the candidate
    eval_objects: int = 60  # validation objects evaluated per version, spread over the validation images
    timeout_minutes: float = 30.0  # a job running longer is cancelled and marked failed
    cpus: float = 1.0  # CPUs a job reserves on Ray (it computes with one torch thread whatever this says)
    min_val_objects: int = 20  # fewer validation objects than this: the candidate is never promoted (noise)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FinetuneSettings:
        read = EnvReader(env)
        number = lambda name, default, kind, low=0: read.number(f"CLICKMASK_FINETUNE_{name}", default, kind, low)

        return cls(
            every_annotations=number("EVERY_ANNOTATIONS", cls.every_annotations, int),
            every_minutes=number("EVERY_MINUTES", cls.every_minutes, float),
            samples=number("SAMPLES", cls.samples, int, 1),
            lr=number("LR", cls.lr, float, 1e-9),
            val_percent=min(90, number("VAL_PERCENT", cls.val_percent, int, 1)),
            eval_objects=number("EVAL_OBJECTS", cls.eval_objects, int, 1),
            timeout_minutes=number("TIMEOUT_MINUTES", cls.timeout_minutes, float, 0.1),
            cpus=number("CPUS", cls.cpus, float),
            min_val_objects=number("MIN_VAL_OBJECTS", cls.min_val_objects, int),
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # repr=False: a database URL may carry a password, and settings end up in logs.
    database_url: str = field(repr=False)
    store_url: str
    s3_endpoint_url: str | None = None
    recorder_queue_size: int = 10_000
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password masked, for messages and logs."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        read = EnvReader(environ)
        get = read.text
        # Absolute from the start, so the same settings mean the same files whatever the working directory.
        data_dir = Path(get("CLICKMASK_DATA_DIR") or "~/.clickmask").expanduser().absolute()
        database_url = get("CLICKMASK_DATABASE_URL") or f"sqlite:///{data_dir / 'clickmask.db'}"
        try:
            make_url(database_url)
        except ArgumentError as exc:
            raise SettingsError(f"CLICKMASK_DATABASE_URL is not an SQLAlchemy URL: {exc}") from None
        store_url = get("CLICKMASK_STORE_URL") or str(data_dir / "store")
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            store_url=store_url,
            s3_endpoint_url=get("CLICKMASK_S3_ENDPOINT_URL"),
            recorder_queue_size=read.number("CLICKMASK_RECORDER_QUEUE_SIZE", 10_000, int, 1),
            finetune=FinetuneSettings.from_env(read.env),
        )
