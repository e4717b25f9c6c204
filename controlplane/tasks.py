"""Control-plane Celery tasks: thin wrappers that take ids/JSON and call plain functions."""

import dataclasses

from celery import shared_task
from django.utils import timezone


@shared_task(name="controlplane.ping")
def ping(payload: str) -> str:
    """Liveness probe for a worker: echoes its payload so a caller can tell replies apart."""
    return f"pong:{payload}"


@shared_task(name="controlplane.watchdog")
def watchdog() -> dict:
    from controlplane.services import rollback
    from controlplane.services import watchdog as service

    now = timezone.now()
    report = dataclasses.asdict(service.run(now))
    report["rolled_back"] = rollback.run(now)  # the automatic rollback policy option
    return report


@shared_task(name="controlplane.refresh_actions")
def refresh_actions() -> int:
    from controlplane.services.actions import refresh_sent_actions

    return refresh_sent_actions()


@shared_task(name="controlplane.retention")
def retention() -> dict:
    from controlplane.services import telemetry

    now = timezone.now()  # each step works node by node: one node's failure stops nothing else
    return {"downsampled": telemetry.downsample(now), "expired": telemetry.expire(now)}


@shared_task(name="controlplane.rollout")
def rollout() -> dict:
    from controlplane.services.rollout import rollout_checkpoints

    return rollout_checkpoints()


@shared_task(name="controlplane.reconcile")
def reconcile() -> list[str]:
    from controlplane.services.desired import reconcile as service

    return service()
