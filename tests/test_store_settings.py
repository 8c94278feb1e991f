from pathlib import Path

import pytest

from orchestrator.settings import Settings, SettingsError


def test_defaults_put_everything_under_the_data_dir(tmp_path):
    settings = Settings.from_env({"CLICKMASK_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'clickmask.db'}"
    assert settings.store_url == str(tmp_path / "store")
    assert settings.s3_endpoint_url is None


def test_data_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings.from_env({})
    assert settings.data_dir == tmp_path / ".clickmask"
    assert settings.database_url.endswith(str(Path(".clickmask") / "clickmask.db"))


def test_relative_data_dir_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"CLICKMASK_DATA_DIR": "data"}).data_dir == tmp_path / "data"


def test_variables_override_defaults():
    settings = Settings.from_env(
        {
            "CLICKMASK_DATABASE_URL": "postgresql+psycopg://u:pw@db/clickmask",
            "CLICKMASK_STORE_URL": "s3://bucket/prefix",
            "CLICKMASK_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "CLICKMASK_RECORDER_QUEUE_SIZE": "50",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u:pw@db/clickmask"
    assert settings.store_url == "s3://bucket/prefix"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.recorder_queue_size == 50


def test_password_stays_out_of_repr_and_safe_url():
    settings = Settings.from_env({"CLICKMASK_DATABASE_URL": "postgresql+psycopg://u:hunter2@db/clickmask"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.database_url_safe
    assert settings.database_url_safe.startswith("postgresql+psycopg://u:")


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.database_url = "sqlite://"


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"CLICKMASK_DATABASE_URL": "not a url"}, "CLICKMASK_DATABASE_URL"),
        ({"CLICKMASK_RECORDER_QUEUE_SIZE": "many"}, "CLICKMASK_RECORDER_QUEUE_SIZE"),
        ({"CLICKMASK_RECORDER_QUEUE_SIZE": "0"}, "CLICKMASK_RECORDER_QUEUE_SIZE"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_finetune_settings_have_defaults_and_read_their_variables():
    from orchestrator.settings import FinetuneSettings

    assert Settings.from_env({}).finetune == FinetuneSettings()
    tuned = Settings.from_env({"CLICKMASK_FINETUNE_EVERY_ANNOTATIONS": "0", "CLICKMASK_FINETUNE_EVERY_MINUTES": "2.5",
                               "CLICKMASK_FINETUNE_SAMPLES": "500", "CLICKMASK_FINETUNE_LR": "1e-4"}).finetune
    assert (tuned.every_annotations, tuned.every_minutes, tuned.samples, tuned.lr) == (0, 2.5, 500, 1e-4)
    with pytest.raises(SettingsError, match="CLICKMASK_FINETUNE_SAMPLES"):
        Settings.from_env({"CLICKMASK_FINETUNE_SAMPLES": "many"})
