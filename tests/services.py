"""Real services for the tests: reachability probes, throwaway databases, and the appliance
(``liveupdate serve``) or a Celery worker started as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "LIVEUPDATE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)
# The suite's Celery workers and the control plane under test must share one Redis database:
# without LIVEUPDATE_TEST_REDIS, the REDIS_URL the control plane uses.
REDIS_URL = (
    os.environ.get("LIVEUPDATE_TEST_REDIS")
    or os.environ.get("REDIS_URL")
    or "redis://127.0.0.1:6379/0"
)
CHROMIUM = os.environ.get("LIVEUPDATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TEST_PASSWORD = "correct-horse-battery"


def postgres_up() -> bool:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def temporary_postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"liveupdate_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def appliance_env(
    data_dir: Path, database_url: str | None, redis_url: str | None
) -> dict[str, str]:
    """Environment of a control-plane subprocess: embedded when both URLs are None."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        {
            "LIVEUPDATE_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "SECRET_KEY": "test-" + uuid.uuid4().hex,
            "DEBUG": "false",
        }
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@contextlib.contextmanager
def appliance_on_new_database(
    postgres_url: str, redis_url: str, data_dir: Path
) -> Iterator[Appliance]:
    """A running appliance on a PostgreSQL database of its own (dropped at the end)."""
    with temporary_postgres_database(postgres_url) as database_url:
        env = appliance_env(data_dir, database_url, redis_url)
        with Appliance(env, data_dir / "server.log") as app:
            yield app


@contextlib.contextmanager
def chromium(executable_path: str) -> Iterator[Any]:
    """A headless Chromium (Playwright's Browser) on Debian's executable, closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def node_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of a node subprocess (``liveupdate node run`` or its Celery worker): this
    checkout on ``redis_url``, without the plane's database or the embedded broker, and
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NODE_BROKER_URL")}
    return {**env, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), **extra}


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(
    process: subprocess.Popen | None, *, timeout: float, whole_group: bool = False
) -> None:
    """SIGTERM a process started in its own session (its whole group when ``whole_group``), then
    SIGKILL the whole group if it has not exited after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    if whole_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Appliance:
    """A migrated control plane served by ``liveupdate serve`` (``workers`` processes) in a
    subprocess, with a user to log in as."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1):
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, username: str = "operator", superuser: bool = True) -> Appliance:
        manage(self.env, "migrate", "--noinput")
        create = (
            "from django.contrib.auth import get_user_model; U = get_user_model(); "
            f"u, _ = U.objects.get_or_create(username={username!r}); "
            f"u.is_staff = u.is_superuser = {superuser}; "
            f"u.set_password({TEST_PASSWORD!r}); u.save()"
        )
        manage(self.env, "shell", "-c", create)
        self.username = username
        return self.serve()

    def serve(self) -> Appliance:
        """(Re)start the server on this appliance's port (start() migrates first)."""
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can reap every worker
        )
        wait_until(self._healthy, 60, f"the server on {self.url} (log: {self.log_path})", 0.2)
        return self

    def _healthy(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{self.log_path.read_text()}")
        try:
            return requests.get(f"{self.url}/api/health/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def login(self) -> requests.Session:
        """A requests session logged in through the real login form (CSRF included).

        Every request asks for ``Connection: close``: uvicorn closes a keep-alive connection
        after 5 s idle, and a pooled connection reused just as the server closes it fails with
        RemoteDisconnected (a CI run lost a GET this way after a slow page load). A fresh local
        connection per request costs ~0.1 ms and cannot race the server's idle timeout."""
        session = requests.Session()
        session.headers["Connection"] = "close"
        page = session.get(f"{self.url}/accounts/login/", timeout=10)
        page.raise_for_status()
        response = session.post(
            f"{self.url}/accounts/login/",
            data={
                "username": self.username,
                "password": TEST_PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": f"{self.url}/accounts/login/"},
            timeout=10,
            allow_redirects=False,
        )
        if response.status_code != 302:
            raise RuntimeError(f"login failed: {response.status_code} {response.text[:500]}")
        return session

    def stop(self) -> None:
        """SIGTERM to the server (it stops its workers); SIGKILL to the whole group after 15 s."""
        stop_process(self.process, timeout=15)

    def __enter__(self) -> Appliance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str], app: str, queues: str, log_path: Path
) -> Iterator[subprocess.Popen]:
    """A real Celery worker process (solo pool: one process, clean SIGTERM)."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"test-{uuid.uuid4().hex[:6]}@%h",
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
