"""Settings load in a fresh interpreter, so each case sees exactly the environment it sets."""

import subprocess
import sys

from tests.services import ROOT

SUMMARY = "s.DEBUG, s.CHANNEL_LAYERS['default']['BACKEND'], s.CELERY_BROKER_URL"


def load_settings(tmp_path, printed=SUMMARY, **env):
    """Import the settings with exactly ``env`` set and print ``printed`` (names of ``s``)."""
    code = f"import controlplane.settings as s; print({printed})"
    base = {"PATH": "/usr/bin:/bin", "LIVEUPDATE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_embedded_default_needs_no_servers(tmp_path):
    result = load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True",
        "channels.layers.InMemoryChannelLayer",
        "filesystem://",
    ]
    assert (tmp_path / "secret_key").exists()


def test_embedded_sqlite_is_shared_safely_by_several_processes(tmp_path):
    result = load_settings(tmp_path, printed="s.DATABASES['default']['OPTIONS']")
    assert result.returncode == 0, result.stderr
    options = result.stdout
    assert "'transaction_mode': 'IMMEDIATE'" in options and "journal_mode=WAL" in options
    assert "'timeout': 20" in options


def test_redis_url_switches_channels_and_celery(tmp_path):
    result = load_settings(
        tmp_path,
        REDIS_URL="redis://127.0.0.1:6379/3",
        SECRET_KEY="k" * 50,
        DATABASE_URL="postgres://u@h/db",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "channels_redis.core.RedisChannelLayer",
        "redis://127.0.0.1:6379/3",
    ]


def test_production_without_secret_key_fails_loudly(tmp_path):
    result = load_settings(tmp_path, DATABASE_URL="postgres://u@h/db")
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_bad_debug_value_is_named(tmp_path):
    result = load_settings(tmp_path, DEBUG="sometimes")
    assert "DEBUG must be a boolean" in result.stderr and "'sometimes'" in result.stderr


def test_embedded_plane_and_node_share_one_broker_layout(tmp_path):
    """A task the plane writes lands in the folder the node's worker reads, and results back."""
    printed = (
        "repr((s.CELERY_BROKER_URL, s.CELERY_RESULT_BACKEND, s.CELERY_BROKER_TRANSPORT_OPTIONS))"
    )
    result = load_settings(tmp_path, printed)
    assert result.returncode == 0, result.stderr
    plane = eval(result.stdout)  # noqa: S307 - the repr of three plain values, printed above
    node_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NODE_NAME": "edge-1"}
    code = (
        "from nodeworker.celery_app import app; c = app.conf; "
        "print(repr((c.broker_url, c.result_backend, c.broker_transport_options)))"
    )
    env = {**node_env, "LIVEUPDATE_DATA_DIR": str(tmp_path)}
    node = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert node.returncode == 0, node.stderr
    assert plane == eval(node.stdout)  # noqa: S307 - as above
    assert plane[2]["data_folder_in"] == str(tmp_path.resolve() / "broker")
    assert (tmp_path / "broker-control").is_dir()
