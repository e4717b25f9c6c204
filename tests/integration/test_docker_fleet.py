"""docker/compose.yaml validated by the Compose CLI (no engine needed), its Prometheus and
Grafana provisioning, and the declarative node provisioning it relies on (create_node
--token-from-env)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from controlplane.models import Node
from controlplane.tokens import hash_token
from tests.conftest import require
from tests.services import ROOT

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
TOKEN_1, TOKEN_2 = "a" * 40, "b-" * 20
SECRETS = {
    "SECRET_KEY": "k" * 60,
    "NODE_1_TOKEN": TOKEN_1,
    "NODE_2_TOKEN": TOKEN_2,
    "METRICS_TOKEN": "m" * 40,
    "GRAFANA_ADMIN_PASSWORD": "g" * 20,
}


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) when it answers, else ``docker-compose`` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_config(environ: dict[str, str]) -> subprocess.CompletedProcess:
    command = compose_command()
    require(command is not None, "docker compose or docker-compose")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **environ}
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT / "docker",
    )


def test_compose_file_is_valid_with_every_service_health_checked():
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    fleet = {"postgres", "redis", "web", "worker", "beat", "provision", "prometheus", "grafana"}
    nodes = {name for name in services if name.startswith("node-")}
    assert fleet <= set(services) and len(nodes) >= 2
    for name in fleet - {"provision"} | nodes:  # provision runs once and exits
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    env = {name: services[name]["environment"] for name in nodes}
    assert {e["NODE_NAME"] for e in env.values()} == {"edge-1", "edge-2"}
    assert {e["NODE_TOKEN"] for e in env.values()} == {TOKEN_1, TOKEN_2}
    provision = " ".join(services["provision"]["command"])
    assert provision.count("--token-from-env") == len(nodes)
    for name in nodes:
        assert services[name]["depends_on"]["provision"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgres://")
    assert "migrate" in " ".join(services["web"]["command"])
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "--constraint constraints.txt" in dockerfile


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_its_secrets(secret):
    result = compose_config({k: v for k, v in SECRETS.items() if k != secret})
    assert result.returncode != 0 and secret in result.stderr


def test_prometheus_scrapes_the_plane_and_grafana_provisions_the_fleet_dashboard():
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    mounts = {
        name: dict(v.split(":")[:2] for v in services[name]["volumes"] if v.startswith("/"))
        for name in ("prometheus", "grafana")
    }
    for name, mounted in mounts.items():  # every file a container reads is in the repository
        assert mounted and all(Path(source).exists() for source in mounted), (name, mounted)
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["web:8000"]
    token_file = job["authorization"]["credentials_file"]
    assert token_file in " ".join(services["prometheus"]["command"])
    assert services["web"]["environment"]["LIVEUPDATE_METRICS_TOKEN"] == SECRETS["METRICS_TOKEN"]
    provisioning = ROOT / "docker" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    datasource = source["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "liveupdate.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    host_folder = next(h for h, c in mounts["grafana"].items() if c == folder)
    dashboards = [json.loads(p.read_text()) for p in Path(host_folder).glob("*.json")]
    assert [d["uid"] for d in dashboards] == ["liveupdate-fleet"]
    used = {p["datasource"]["uid"] for p in dashboards[0]["panels"]}
    used |= {a["datasource"]["uid"] for a in dashboards[0]["annotations"]["list"] if "expr" in a}
    assert used == {datasource["uid"]}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(folder + "/") and (Path(host_folder) / Path(home).name).exists()


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


@pytest.mark.django_db
def test_create_node_takes_its_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDGE_TOKEN", TOKEN_1)
    out = run("create_node", "edge-1", "--token-from-env", "EDGE_TOKEN")
    assert TOKEN_1 not in out  # the secret is not echoed
    assert Node.objects.get(name="edge-1").token_hash == hash_token(TOKEN_1)
    # declarative: provisioning again with the same token is a no-op, not an error
    assert "already has the token" in run("create_node", "edge-1", "--token-from-env", "EDGE_TOKEN")
    monkeypatch.setenv("EDGE_TOKEN", TOKEN_2)
    with pytest.raises(CommandError, match="exists"):
        run("create_node", "edge-1", "--token-from-env", "EDGE_TOKEN")
    run("create_node", "edge-1", "--token-from-env", "EDGE_TOKEN", "--rotate")
    assert Node.objects.get(name="edge-1").token_hash == hash_token(TOKEN_2)
    monkeypatch.setenv("EDGE_TOKEN", "short")
    with pytest.raises(CommandError, match="EDGE_TOKEN must be 32-256"):
        run("create_node", "edge-2", "--token-from-env", "EDGE_TOKEN")
    monkeypatch.delenv("EDGE_TOKEN")
    with pytest.raises(CommandError, match="EDGE_TOKEN is not set"):
        run("create_node", "edge-2", "--token-from-env", "EDGE_TOKEN")
    assert not Node.objects.filter(name="edge-2").exists()
