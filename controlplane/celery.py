"""The control plane's Celery app (policy dispatch, SLA watchdog, retention).

Node tasks are sent by name to the queue ``node.<name>`` (see nodeworker.protocol); the node has
its own Celery app and never imports Django.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["controlplane"])
