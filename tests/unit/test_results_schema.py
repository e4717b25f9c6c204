"""results.json's contract (nodeworker/protocol/experiment_results.py): the control plane checks
each import against it; the experiment (dlrm_core) writes the file without importing it."""

from __future__ import annotations

import copy
import subprocess
import sys

from nodeworker.protocol.experiment_results import validate_results
from tests.browser.dashboard_support import results_json


def test_a_schema_2_file_is_checked_field_by_field() -> None:
    good = results_json()
    assert validate_results(good) == {}
    bad = copy.deepcopy(good)
    live = bad["strategies"]["liveupdate"]
    live["ci95"]["mean_auc"]["n"] = 2.5
    live["per_seed"][0]["seed"] = "zero"
    live["bytes_per_hour"] = float("nan")
    live["gain_vs_delta_sync_pct_per_window"][0] = "up"
    bad["claims"][2]["verdict"] = "probably"
    bad["audit"]["passed"] = "yes"
    bad["process"] = {"rss": 1, "peak_rss": None}
    bad["fleet"]["nodes"] = True
    assert validate_results(bad) == {
        "strategies.liveupdate.ci95.mean_auc.n": "Must be an integer.",
        "strategies.liveupdate.per_seed.0.seed": "Must be an integer.",
        "strategies.liveupdate.bytes_per_hour": "Must be a finite number or null.",
        "strategies.liveupdate.gain_vs_delta_sync_pct_per_window": (
            "Must be a list of finite numbers or nulls."
        ),
        "claims.2.verdict": (
            "Must be one of within the claimed range, above the claimed range, below the "
            "claimed range, not significant, held, not held, not measured."
        ),
        "audit.passed": "Must be true or false.",
        "process.pss": "This field is required.",
        "fleet.nodes": "Must be an integer.",
    }


def test_schema_1_files_stay_readable() -> None:
    old = {"dataset": {}, "windows": [], "claims": [{"claim": "x", "holds": True}, "free text"],
           "strategies": {"s": {"mean_auc": 0.7, "auc_per_window": [0.7], "mean_logloss": None,
                                "bytes_moved": 0, "cpu_seconds": 1, "peak_memory_overhead_pct": 0,
                                "mean_staleness_s": 2}}}  # fmt: skip
    assert validate_results(old) == {}


def test_a_file_missing_a_required_field_is_refused() -> None:
    broken = results_json()
    del broken["strategies"]["delta_sync"]["mean_auc"]
    assert "strategies.delta_sync.mean_auc" in validate_results(broken)


def test_the_experiment_imports_nothing_of_nodeworker() -> None:
    code = (
        "import sys, dlrm_core.experiment.results, dlrm_core.commands.experiment; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nodeworker', 'django')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_control_plane_reads_the_contract_without_torch() -> None:
    code = "import sys, controlplane.experiments; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
