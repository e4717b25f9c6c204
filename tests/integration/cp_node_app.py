"""A stand-in node worker for the control-plane tests: a Celery app that registers the node task
names of nodeworker.protocol and records each call (name and kwargs) in a Redis list
``cp-test:calls:<NODE_NAME>``. Run with ``celery -A tests.integration.cp_node_app worker``."""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

from nodeworker import protocol
from nodeworker.protocol.operations import NODE_TASKS

REDIS_URL = os.environ["REDIS_URL"]
NODE_NAME = os.environ["NODE_NAME"]
CALLS_KEY = f"cp-test:calls:{NODE_NAME}"

app = Celery("cp-test-node", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = protocol.node_queue(NODE_NAME)


def _register(task_name: str) -> None:
    def run(**kwargs):
        redis.Redis.from_url(REDIS_URL).rpush(
            CALLS_KEY, json.dumps({"task": task_name, "kwargs": kwargs})
        )
        return {"ok": True, "node": NODE_NAME, "task": task_name}

    app.task(name=task_name)(run)


for _name in NODE_TASKS:
    _register(_name)
