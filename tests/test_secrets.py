"""Secrets stay out of error messages and logs where the components fail: S3 credentials (image fetches from moto's
real S3 server, and from an S3 endpoint that is down), a database password (the command line and the click recorder
against a PostgreSQL port where nothing listens), and Label Studio's API key (a refused key). Logs are captured at
INFO, the level the service logs at. The served backend's own answers and log files are checked in
test_hostile_input.py."""
from __future__ import annotations

import logging
from datetime import datetime, UTC

import boto3
import pytest

from image_server import Site
from integrations.images import ImageFetcher, ImageFetchError, ImageSettings
from support import free_port

ACCESS_KEY, SECRET_KEY = "AKIACLICKMASKTEST042", "s3-secret-6d1f0e8b9a7c"
DB_PASSWORD = "db-pw-c41e9a07"
API_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.ls-key-03a7e5c1"


def assert_clean(*texts: str, secrets: tuple[str, ...]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


@pytest.fixture
def s3_credentials(monkeypatch, aws_env):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def test_s3_credentials_in_no_error_or_log(moto_endpoint, s3_credentials, caplog):
    caplog.set_level(logging.INFO)
    bucket = "clickmask-secrets"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    boto3.client("s3", endpoint_url=moto_endpoint).put_object(Bucket=bucket, Key="junk.png", Body=b"not an image")
    up = ImageFetcher(ImageSettings(allowed_buckets=(bucket,), s3_endpoint_url=moto_endpoint))
    down = ImageFetcher(ImageSettings(allowed_buckets=(bucket,), s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                                      timeout_s=3))
    messages = []
    for fetcher, uri in ((up, f"s3://{bucket}/missing.png"), (up, f"s3://{bucket}/junk.png"),
                         (up, "s3://another-bucket/a.png"), (down, f"s3://{bucket}/a.png")):
        with pytest.raises(ImageFetchError) as caught:
            fetcher.fetch(uri)
        messages.append(str(caught.value))
    assert "does not exist" in messages[0] and "is not a PNG" in messages[1] and "not allowed" in messages[2]
    assert_clean(*messages, caplog.text, secrets=(ACCESS_KEY, SECRET_KEY))


def test_a_refused_label_studio_key_in_no_error_or_log(caplog):
    caplog.set_level(logging.INFO)
    studio = Site()
    try:
        studio.routes["/api/token/refresh/"] = (401, {}, b'{"detail": "Token is invalid"}')
        studio.routes["/data/upload/1/a.png"] = (401, {}, b'{"detail": "not authenticated"}')
        fetcher = ImageFetcher(ImageSettings(label_studio_url=studio.url, label_studio_api_key=API_KEY))
        with pytest.raises(ImageFetchError, match="check LABEL_STUDIO_API_KEY") as caught:
            fetcher.fetch("/data/upload/1/a.png")
        assert studio.headers[-1]["Authorization"] == f"Token {API_KEY}"  # it was really sent, to Label Studio
    finally:
        studio.close()
    assert_clean(str(caught.value), repr(fetcher.ls_auth), repr(fetcher.settings), caplog.text, secrets=(API_KEY,))


@pytest.fixture
def unreachable_database(monkeypatch) -> str:
    url = f"postgresql+psycopg://clickmask:{DB_PASSWORD}@127.0.0.1:{free_port()}/clickmask"
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", url)
    return url


@pytest.mark.parametrize("argv", [["export", "--project", "1", "--out", "{tmp}/coco.json", "--no-progress"],
                                  ["db", "current"], ["models", "list", "--project", "1"],
                                  ["finetune", "--project", "1"]])
def test_database_password_in_no_command_line_error(unreachable_database, tmp_path, capsys, caplog, argv):
    from orchestrator.cli import main

    caplog.set_level(logging.INFO)
    code = main([part.format(tmp=tmp_path) for part in argv])
    out, err = capsys.readouterr()
    assert code != 0 and "127.0.0.1" in out + err  # it said which database failed ...
    assert_clean(out, err, caplog.text, secrets=(DB_PASSWORD,))  # ... without the password


def test_database_password_in_no_recorder_log(unreachable_database, caplog):
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.recorder import ClickRecord, Recorder

    caplog.set_level(logging.INFO)
    engine = make_engine(unreachable_database)
    recorder = Recorder(make_session_factory(engine), attempts=1, retry_delay_s=0.01).start()
    recorder.record(ClickRecord(project=1, image_uri="s3://b/a.png", image_width=8, image_height=8, session_key="s",
                                seq=1, x=1.0, y=1.0, positive=True, clicked_at=datetime.now(UTC)))
    status = recorder.stop(timeout=10)
    engine.dispose()
    assert status.dropped == 1 and "database" in caplog.text  # the outage was logged ...
    assert_clean(caplog.text, str(status), repr(recorder), secrets=(DB_PASSWORD,))  # ... without the password
