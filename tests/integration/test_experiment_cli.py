"""`liveupdate experiment` on a slice of MovieLens-100k: results.json and an offline report."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

from controlplane.cli import main
from nodeworker.protocol.experiment_results import validate_results

KEYS = {"mean_auc", "auc_per_window", "mean_logloss", "bytes_moved", "cpu_seconds",
        "peak_memory_overhead_pct", "mean_staleness_s"}  # fmt: skip


def _external_refs(page: str) -> list[str]:
    refs: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            refs.extend(f"{tag} {k}={v}" for k, v in attrs if k in ("src", "href") and v)

    Parser().feed(page)
    return refs


NAMES = {"stale", "oracle", "delta_sync", "liveupdate", "hybrid"}


def test_experiment_cli_on_a_movielens_slice(shared_data, tmp_path, capsys) -> None:
    out = tmp_path / "exp"
    code = main([
        "experiment", "--data", str(shared_data / "movielens_100k"), "--format", "movielens",
        "--max-events", "3000", "--qps", "5", "--window", "120", "--sync-period", "60",
        "--label-delay", "15", "--audit", "--out", str(out),
        "--strategies", ",".join(sorted(NAMES)), "--seeds", "2", "--nodes", "2",
        "--fine-window", "30",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert validate_results(results) == {}  # what the control plane will accept on import
    assert {"dataset", "windows", "strategies", "claims"} <= set(results)
    assert results["dataset"]["events"] == 3000 and results["dataset"]["format"] == "movielens"
    assert set(results["strategies"]) == NAMES
    n_windows = len(results["windows"])
    assert n_windows >= 3
    assert sum(w["events"] for w in results["windows"]) == results["dataset"]["eval_events"]
    for name, s in results["strategies"].items():
        assert KEYS <= set(s), name
        assert len(s["auc_per_window"]) == n_windows
        assert 0.0 < s["mean_auc"] < 1.0 and math.isfinite(s["mean_logloss"])
    assert results["strategies"]["stale"]["bytes_moved"] == 0
    assert results["strategies"]["delta_sync"]["bytes_moved"] > 0
    assert results["strategies"]["liveupdate"]["cpu_seconds"] > 0
    assert [c["id"] for c in results["claims"]] == ["memory", "update_cost", "accuracy"]
    assert all(c["held"] in (True, False, None) for c in results["claims"])
    assert results["claims"][2]["interval"]["n"] == 2  # over the two seeds
    assert results["seeds"] == [0, 1] and results["fleet"]["nodes"] == 2
    live = results["strategies"]["liveupdate"]
    assert live["fleet"]["nodes"] == 2 and live["ci95"]["mean_auc"]["n"] == 2
    assert len(live["auc_per_fine_window"]) >= 10
    assert results["audit"]["passed"] is True and len(results["audit"]["runs"]) == 2
    page = (out / "report.html").read_text()
    assert _external_refs(page) == []  # offline: no <script src>, <link href>, <img src>
    assert "Plotly.newPlot" in page and "plotly.js v" in page  # the bundle is inlined
    for title in ("What this run says", "AUC per window", "gain over delta_sync",
                  "frontier: AUC vs bytes", "frontier: AUC vs fleet CPU", "Memory overhead",
                  "rank per table", "Paper claims"):  # fmt: skip
        assert title in page
    assert "wrote" in capsys.readouterr().out


def test_experiment_cli_sweeps_label_delays_and_sync_periods(shared_data, tmp_path) -> None:
    out = tmp_path / "sweep"
    code = main([
        "experiment", "--data", str(shared_data / "movielens_100k"), "--format", "movielens",
        "--max-events", "3000", "--qps", "5", "--window", "120", "--sync-period", "60",
        "--label-delay", "15", "--label-delays", "15,60", "--sync-periods", "30",
        "--strategies", "delta_sync,liveupdate,hybrid", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["label_delay_s"] for r in results["label_delay_sweep"]] == [15.0, 60.0]
    assert [r["sync_period_s"] for r in results["frontier"]] == [30.0, 60.0]
    fast, slow = results["frontier"]
    # a sync every 30 s moves more bytes per hour than one every 60 s
    assert fast["bytes_per_hour"]["delta_sync"] > slow["bytes_per_hour"]["delta_sync"]
    assert [r["sync_period_s"] for r in results["frontier_reading"]] == [30.0, 60.0]
    assert results["audit"] == {"enabled": False, "passed": None, "runs": []}


def test_experiment_cli_rejects_bad_input(tmp_path, capsys) -> None:
    code = main(["experiment", "--format", "movielens", "--out", str(tmp_path)])
    assert code == 2 and "--data is required" in capsys.readouterr().err
    code = main(["experiment", "--format", "synthetic", "--budget-pct", "0", "--out",
                 str(tmp_path)])  # fmt: skip
    assert code == 2 and "budget_pct" in capsys.readouterr().err
