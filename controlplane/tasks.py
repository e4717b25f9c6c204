"""Control-plane Celery tasks: thin wrappers that take ids/JSON and call plain functions."""

from celery import shared_task


@shared_task(name="controlplane.ping")
def ping(payload: str) -> str:
    """Liveness probe for a worker: echoes its payload so a caller can tell replies apart."""
    return f"pong:{payload}"
