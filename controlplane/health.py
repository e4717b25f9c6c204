from django.conf import settings
from django.db import connection


def check() -> dict:
    """What a load balancer or compose health check needs to know; never raises."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health endpoint
        database = f"error: {exc.__class__.__name__}"
    return {
        "ok": database == "ok",
        "database": database,
        "database_engine": connection.vendor,
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1],
        "broker": "redis" if settings.REDIS_URL else "filesystem",
    }
