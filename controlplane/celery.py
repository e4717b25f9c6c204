"""The control plane's Celery app (policy dispatch, SLA watchdog, retention).

Node tasks are sent by name to the queue ``node.<name>`` (see nodeworker.protocol); the node has
its own Celery app and never imports Django.
"""

import os

from celery import Celery

from controlplane.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["controlplane"])

# Periodic work (run `celery -A controlplane beat`); each task calls a plain, tested function.
# A run not picked up before the next one is due expires, so a stopped worker builds no backlog.
_SLA_INTERVAL = env_int("LIVEUPDATE_SLA_INTERVAL_S", 10, minimum=1)
_PERIODIC = {
    "sla-watchdog": ("controlplane.watchdog", _SLA_INTERVAL),
    "refresh-node-actions": ("controlplane.refresh_actions", 5),
    "checkpoint-rollout": ("controlplane.rollout", 15),
    "telemetry-retention": ("controlplane.retention", 300),
    "desired-state": ("controlplane.reconcile", env_int("LIVEUPDATE_RECONCILE_S", 15, minimum=1)),
}
app.conf.beat_schedule = {
    name: {"task": task, "schedule": float(every), "options": {"expires": float(every)}}
    for name, (task, every) in _PERIODIC.items()
}
