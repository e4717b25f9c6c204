"""What the fault tests share: a real control plane (services.Appliance on its own PostgreSQL
database) driven through its API as admin, real ``liveupdate node run`` processes, a private
redis-server that may be restarted, and the database as the ground truth for telemetry."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests

from tests import services


class Plane:
    """A control plane the tests can stop and start again on the same port."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path):
        self.database_url = database_url
        self.env = services.appliance_env(data_dir, database_url, redis_url)
        self.env["LIVEUPDATE_ACTION_TIMEOUT_S"] = "120"
        self.appliance = services.Appliance(self.env, data_dir / "server.log")
        self.url = self.appliance.url
        self.token = ""

    def start(self) -> Plane:
        if self.token:  # a restart: migrated, user and token exist
            self.appliance.serve()
            return self
        self.appliance.start(username="fault-admin", superuser=True)
        self.token = services.manage(
            self.env,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model; "
            "from rest_framework.authtoken.models import Token; "
            "user = get_user_model().objects.get(username='fault-admin'); "
            "print(Token.objects.get_or_create(user=user)[0].key)",
        ).split()[-1]
        return self

    def stop(self) -> None:
        self.appliance.stop()

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}"}
        return requests.request(
            method, f"{self.url}/api/{path}", headers=headers, timeout=30, **kwargs
        )

    def create_node(self, name: str) -> str:
        response = self.api("post", "nodes/", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def seqs(self, node: str) -> list[int]:
        """Every stored seq of ``node``, in order (duplicates would show twice)."""
        return [
            row[0]
            for row in self.query(
                "SELECT t.seq FROM controlplane_telemetrysample t "
                "JOIN controlplane_node n ON n.id = t.node_id WHERE n.name = %s ORDER BY t.seq",
                node,
            )
        ]

    def events(self, node: str, kind: str) -> list[dict]:
        return [
            row[0]
            for row in self.query(
                "SELECT e.detail FROM controlplane_nodeevent e "
                "JOIN controlplane_node n ON n.id = e.node_id "
                "WHERE n.name = %s AND e.kind = %s ORDER BY e.id",
                node,
                kind,
            )
        ]


def assert_exactly_once(seqs: list[int]) -> None:
    """Nothing lost (0..n-1 contiguous) and nothing duplicated."""
    assert seqs, "no telemetry stored"
    assert len(seqs) == len(set(seqs)), f"duplicate seqs: {len(seqs) - len(set(seqs))}"
    missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
    assert not missing, f"lost seqs: {missing[:20]}"


class NodeProcess:
    """``liveupdate node run`` as a subprocess (its own Celery worker included)."""

    def __init__(
        self,
        name: str,
        plane_url: str,
        token: str,
        data_dir: Path,
        redis_url: str,
        wrapper: tuple[str, ...] = (),
    ):
        self.name, self.plane_url, self.token = name, plane_url, token
        self.data_dir = data_dir
        self.wrapper = wrapper  # a command that execs the node's (e.g. in its own mounts)
        self.env = services.node_env(redis_url, LIVEUPDATE_DATA_DIR=str(data_dir.parent))
        self.process: subprocess.Popen | None = None
        self.runs = 0
        self.url = ""

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}-{self.runs}.log"

    def start(self, qps: float = 40, label_delay: float = 0.2, label_window: float = 30) -> None:
        self.runs += 1
        command = [*self.wrapper, sys.executable, "-m", "controlplane.cli", "node", "run"]
        command += ["--name", self.name]
        command += ["--control-plane", self.plane_url, "--token", self.token]
        command += ["--data-dir", str(self.data_dir), "--replay", "synthetic"]
        command += ["--qps", str(qps), "--label-delay", str(label_delay)]
        command += ["--label-window", str(label_window), "--sla-ms", "5000", "--no-pin"]
        self.process = subprocess.Popen(
            command,
            cwd=services.ROOT,
            env=self.env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # kill -9 of the group takes the worker with it
        )
        services.wait_until(self._serving, 120, f"node {self.name} serving ({self.log_path})", 0.3)

    def _serving(self) -> bool:
        self.check_alive()
        found = re.search(r"serving on (http://\S+)", self.log_path.read_text())
        if found:
            self.url = found.group(1)
        return bool(found)

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"node {self.name} exited:\n{self.log_path.read_text()[-4000:]}")

    def kill9(self) -> None:
        """SIGKILL the node and its worker at once: no cleanup of any kind runs."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        services.stop_process(self.process, timeout=60, whole_group=True)

    def predict(self) -> dict:
        row = {
            "sparse": {"user_id": "u-17", "item_id": 42, "ctx_0": None, "ctx_1": ["a", "b"]},
            "dense": [0.1, -0.2, 0.3, 0.0],
        }
        response = requests.post(f"{self.url}/v1/predict", json={"requests": [row]}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


class PrivateRedis:
    """A redis-server of this test's own (never the shared one on 6379), restartable."""

    def __init__(self, work_dir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            if services.IN_CI:
                pytest.fail("redis-server is required under CI but is missing")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = services.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.work_dir = work_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.work_dir)]
        log = (self.work_dir / f"redis-{uuid.uuid4().hex[:4]}.log").open("w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        services.wait_until(self._up, 20, f"redis-server on {self.port}", 0.1)
        return self

    def _up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@contextmanager
def plane_and_node(
    database_url: str, redis_url: str, tmp_path: Path, prefix: str
) -> Iterator[tuple[Plane, NodeProcess]]:
    """A started control plane and a node registered on it as ``<prefix>-<6 hex>`` (not started
    yet: each test starts it its way); both stopped at the end, the node first."""
    plane = Plane(database_url, redis_url, tmp_path).start()
    try:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        node = NodeProcess(name, plane.url, plane.create_node(name), tmp_path / name, redis_url)
        try:
            yield plane, node
        finally:
            node.stop()
    finally:
        plane.stop()


def wait_for(predicate, timeout: float, what: str, *processes: NodeProcess) -> None:
    def check():
        for process in processes:
            process.check_alive()
        return predicate()

    services.wait_until(check, timeout, what, 0.5)
