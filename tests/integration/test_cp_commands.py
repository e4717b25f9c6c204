"""The operator commands (`liveupdate manage ...`) and the beat schedule's task names."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from controlplane.models import ExperimentRun, Node
from controlplane.tokens import hash_token

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_create_node_prints_a_working_token_and_rotates_only_on_request():
    token = run("create_node", "edge-1", "--host", "10.0.0.1")
    assert Node.objects.get(name="edge-1").token_hash == hash_token(token)
    with pytest.raises(CommandError, match="exists"):
        run("create_node", "edge-1")
    rotated = run("create_node", "edge-1", "--rotate")
    assert rotated != token and Node.objects.get(name="edge-1").token_hash == hash_token(rotated)
    with pytest.raises(CommandError, match="name"):
        run("create_node", "Bad_Name")
    with pytest.raises(CommandError, match="no policy"):
        run("create_node", "edge-2", "--policy", "missing")


def test_setup_roles_grants_roles():
    get_user_model().objects.create_user("ana")
    assert "ana: operator" in run("setup_roles", "--grant", "ana:operator")
    assert list(
        get_user_model().objects.get(username="ana").groups.values_list("name", flat=True)
    ) == ["operator"]
    with pytest.raises(CommandError, match="role must be one of"):
        run("setup_roles", "--grant", "ana:root")


def test_import_experiment_validates(tmp_path):
    good = {
        "dataset": {"name": "avazu_head9k"},
        "windows": [],
        "claims": [{"claim": "memory < 2%", "holds": True}],
        "strategies": {
            "stale": {
                "mean_auc": 0.6,
                "auc_per_window": [],
                "mean_logloss": 0.7,
                "bytes_moved": 0,
                "cpu_seconds": 0.0,
                "peak_memory_overhead_pct": 0.0,
                "mean_staleness_s": None,
            }
        },
    }
    path = tmp_path / "run-a" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(good))
    assert "imported experiment run 'run-a'" in run("import_experiment", str(path))
    assert ExperimentRun.objects.get(name="run-a").dataset_name == "avazu_head9k"
    del good["strategies"]["stale"]["cpu_seconds"]
    path.write_text(json.dumps(good))
    with pytest.raises(CommandError, match="strategies.stale.cpu_seconds: This field is required"):
        run("import_experiment", str(path), "--name", "run-b")


def test_beat_schedule_names_registered_tasks():
    from controlplane.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled == {
        "controlplane.watchdog",
        "controlplane.refresh_actions",
        "controlplane.rollout",
        "controlplane.retention",
        "controlplane.reconcile",
    }
    assert scheduled <= set(app.tasks)


def test_periodic_tasks_run_their_functions():
    from controlplane import tasks

    assert tasks.watchdog.run() == {
        "raised": [],
        "resolved": [],
        "tightened": [],
        "relaxed": [],
        "failed": [],
        "rolled_back": [],  # controlplane.services.rollback
    }
    assert tasks.retention.run() == {
        "downsampled": {"folded": 0, "failed": 0},
        "expired": {"samples": 0, "events": 0, "alerts": 0, "actions": 0, "failed": 0},
    }
    assert tasks.rollout.run() == {} and tasks.refresh_actions.run() == 0
    assert tasks.reconcile.run() == []
