"""GET /api/health/: what a load balancer or compose health check needs to know. Every
dependency is asked, not assumed: the database (SELECT 1), the channel layer and the Celery
broker (Redis: PING within a second; the embedded default's in-process layer and filesystem
broker: the broker folder is writable). One down: "ok" is false and the API answers 503."""

from __future__ import annotations

import os

import redis
from django.conf import settings
from django.db import connection

PING_TIMEOUT_S = 1.0


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health endpoint
        return f"error: {exc.__class__.__name__}"


def _redis(url: str) -> str:
    client = redis.Redis.from_url(
        url, socket_timeout=PING_TIMEOUT_S, socket_connect_timeout=PING_TIMEOUT_S
    )
    try:
        client.ping()
        return "ok"
    except redis.RedisError as exc:
        return f"error: {exc.__class__.__name__}"
    finally:
        client.close()


def _filesystem_broker() -> str:
    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in")
    writable = isinstance(folder, str) and folder and os.access(folder, os.W_OK)
    return "ok" if writable else "error: broker folder not writable"


def check() -> dict:
    """Never raises."""
    database = _database()
    if settings.REDIS_URL:  # the channel layer and the broker are the same server
        channel_layer = broker = _redis(settings.REDIS_URL)
    else:
        channel_layer, broker = "ok", _filesystem_broker()  # the layer is in this process
    backend: str = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    return {
        "ok": database == channel_layer == broker == "ok",
        "database": database,
        "database_engine": connection.vendor,
        "channel_layer": channel_layer,
        "channel_layer_backend": backend.rsplit(".", 1)[-1],
        "broker": broker,
        "broker_transport": "redis" if settings.REDIS_URL else "filesystem",
    }
