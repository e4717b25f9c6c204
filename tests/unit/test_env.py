import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane import env


def test_bool_accepts_common_spellings_and_rejects_others(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG", False) is True
    monkeypatch.setenv("X_FLAG", "0")
    assert env.env_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG.*'maybe'"):
        env.env_bool("X_FLAG", False)


def test_int_names_variable_and_value(monkeypatch):
    monkeypatch.setenv("X_INT", "12")
    assert env.env_int("X_INT", 1, minimum=1) == 12
    monkeypatch.setenv("X_INT", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_INT.*'twelve'"):
        env.env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be >= 1"):
        env.env_int("X_INT", 1, minimum=1)


def test_list_strips_and_drops_empty(monkeypatch):
    monkeypatch.setenv("X_HOSTS", " a.example , b.example,, ")
    assert env.env_list("X_HOSTS", []) == ["a.example", "b.example"]


def test_database_urls(monkeypatch, tmp_path):
    monkeypatch.delenv("X_DB", raising=False)
    assert env.database_from_url("X_DB", tmp_path / "d.db")["NAME"] == str(tmp_path / "d.db")
    monkeypatch.setenv("X_DB", "postgres://u:p%40ss@db.example:6543/live?sslmode=require")
    db = env.database_from_url("X_DB", tmp_path / "d.db")
    assert (db["ENGINE"], db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "django.db.backends.postgresql",
        "live",
        "u",
        "p@ss",
        "db.example",
        "6543",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    monkeypatch.setenv("X_DB", "sqlite:////abs/file.db")
    assert env.database_from_url("X_DB", tmp_path / "d.db")["NAME"] == "/abs/file.db"
    monkeypatch.setenv("X_DB", "mysql://x/y")
    with pytest.raises(ImproperlyConfigured, match="X_DB.*mysql://x/y"):
        env.database_from_url("X_DB", tmp_path / "d.db")
    monkeypatch.setenv("X_DB", "postgres://host:5432/")
    with pytest.raises(ImproperlyConfigured, match="must name a database"):
        env.database_from_url("X_DB", tmp_path / "d.db")


def test_redis_url_must_be_redis(monkeypatch):
    monkeypatch.setenv("X_REDIS", "http://nope")
    with pytest.raises(ImproperlyConfigured, match="X_REDIS"):
        env.redis_url("X_REDIS")
    monkeypatch.setenv("X_REDIS", "")
    assert env.redis_url("X_REDIS") is None


def test_secret_key_is_generated_once_and_kept(tmp_path):
    key_file = tmp_path / "sub" / "secret_key"
    first = env.persistent_secret_key(key_file)
    assert len(first) >= 50 and env.persistent_secret_key(key_file) == first
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
