"""`liveupdate experiment --jobs` and `liveupdate protocol` on a tiny synthetic stream: the
parallel numbers equal the serial ones, the protocol writes its grid, bad flags exit 2."""

from __future__ import annotations

import json

import pytest

from controlplane.cli import main

TINY = ["--format", "synthetic", "--events", "2400", "--user-rows", "400", "--item-rows", "400",
        "--qps", "10", "--window", "120", "--fine-window", "30", "--sync-period", "60",
        "--label-delay", "10", "--pretrain-fraction", "0.3", "--budget-pct", "5"]  # fmt: skip
# every number a seeded replay determines (CPU seconds and wall time are measured, not replayed)
REPLAYED = ("auc_per_window", "auc_per_fine_window", "mean_logloss", "pooled_auc", "bytes_moved",
            "syncs_sent", "syncs_landed", "mean_staleness_s", "peak_measured_memory_pct",
            "budgets", "gain_vs_delta_sync_pct_per_window")  # fmt: skip


def test_jobs_2_gives_the_serial_numbers(tmp_path) -> None:
    flags = [*TINY, "--strategies", "stale,delta_sync,liveupdate,hybrid", "--seeds", "2",
             "--sync-periods", "30", "--link-scales", "0.01", "--threads", "1"]  # fmt: skip
    assert main(["experiment", *flags, "--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    assert main(["experiment", *flags, "--jobs", "2", "--out", str(tmp_path / "parallel")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("serial", "parallel"))
    assert a["seeds"] == b["seeds"] == [0, 1]
    for name in ("stale", "delta_sync", "liveupdate", "hybrid"):
        for key in REPLAYED:
            assert a["strategies"][name][key] == b["strategies"][name][key], (name, key)
        assert a["strategies"][name]["per_seed"] == b["strategies"][name]["per_seed"]
    scales = [e["link_scale_factor"] for e in a["frontier_by_link_scale"]]
    assert scales == [0.01, 1.0]
    for ea, eb in zip(a["frontier_by_link_scale"], b["frontier_by_link_scale"], strict=True):
        assert [r["mean_auc"] for r in ea["frontier"]] == [r["mean_auc"] for r in eb["frontier"]]
        assert [r["sync_period_s"] for r in ea["frontier"]] == [30.0, 60.0]
    # stale and liveupdate never look at the sync period or the link: one run stands for all
    rows = [r for e in a["frontier_by_link_scale"] for r in e["frontier"]]
    assert len({r["mean_auc"]["liveupdate"] for r in rows}) == 1
    assert len({r["mean_auc"]["delta_sync"] for r in rows}) > 1


def test_protocol_runs_the_grid_and_writes_one_file_and_the_reports(tmp_path, capsys) -> None:
    out = tmp_path / "protocol"
    code = main(["protocol", *TINY, "--strategies", "delta_sync,liveupdate,hybrid",
                 "--grid-nodes", "1,2", "--seeds", "2", "--sync-periods", "30", "--jobs", "2",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    protocol = json.loads((out / "protocol.json").read_text())
    labels = [c["label"] for c in protocol["configurations"]]
    assert labels == ["N1-sticky-user", "N2-sticky-user", "N2-random"]  # N = 1 once
    assert protocol["runs"] == 3 * 2 * 2 and protocol["grid"]["sync_periods_s"] == [30.0, 60.0]
    for conf in protocol["configurations"]:
        res = conf["results"]
        assert res["fleet"]["nodes"] == conf["nodes"] and res["seeds"] == [0, 1]
        assert [r["sync_period_s"] for r in res["frontier"]] == [30.0, 60.0]
        assert json.loads((out / conf["label"] / "results.json").read_text()) == res
        assert (out / conf["label"] / "report.html").exists()
    page = (out / "report.html").read_text()
    assert all(f"href='{label}/report.html'" in page for label in labels)
    captured = capsys.readouterr()
    assert "[12/12]" in captured.err and "load average" in captured.err
    assert "N2-random" in captured.out and "wrote" in captured.out


def test_a_protocol_shape_reports_the_numbers_of_its_own_experiment(tmp_path) -> None:
    # the cluster-fed strategies run once, in the first shape, and are shared with the others
    flags = [*TINY, "--strategies", "stale,oracle,delta_sync,liveupdate,hybrid",
             "--sync-periods", "30", "--seeds", "1", "--jobs", "1", "--threads", "1"]  # fmt: skip
    out = tmp_path / "protocol"
    assert main(["protocol", *flags, "--grid-nodes", "1,2", "--grid-routings", "random",
                 "--out", str(out)]) == 0  # fmt: skip
    alone = tmp_path / "alone"
    assert main(["experiment", *flags, "--nodes", "2", "--routing", "random",
                 "--out", str(alone)]) == 0  # fmt: skip
    a = json.loads((alone / "results.json").read_text())
    p = json.loads((out / "N2-random" / "results.json").read_text())
    assert list(p["strategies"]) == list(a["strategies"])
    for name, res in a["strategies"].items():
        for key in (*REPLAYED, "bytes_per_hour", "bytes_moved_projected"):
            assert p["strategies"][name][key] == res[key], (name, key)
        for key in ("nodes", "bytes_moved", "bytes_projected", "memory_peak_bytes"):
            assert p["strategies"][name]["fleet"][key] == res["fleet"][key], (name, key)
    assert [r["mean_auc"] for r in p["frontier"]] == [r["mean_auc"] for r in a["frontier"]]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--jobs", "0"], "--jobs: must be in [1, 64]"),
        (["--jobs", "65"], "--jobs: must be in [1, 64]"),
        (["--jobs", "2", "--threads", "256"], "usable cores"),
        (["--link-scales", "0"], "--link-scales: must be in"),
        (["--sync-periods", "60,nan"], "--sync-periods: must be in"),
        (["--tau-grid", "1.5"], "--tau-grid: must be in"),
        (["--r-max-grid", "0"], "--r-max-grid: must be in"),
        (["--seeds", "101"], "--seeds: must be in [1, 100]"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(["experiment", *TINY, *flags, "--out", str(tmp_path)])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_protocol_rejects_a_bad_grid(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["protocol", *TINY, "--grid-nodes", "0", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--grid-nodes: must be in" in capsys.readouterr().err


def test_an_error_in_a_worker_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    small_budget = [*TINY[:-2], "--budget-pct", "1", "--seeds", "2", "--jobs", "2"]
    code = main(["experiment", *small_budget, "--strategies", "liveupdate", "--out",
                 str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot hold a single table's factors" in err
    assert "Traceback" not in err and not (tmp_path / "results.json").exists()
