"""bench/update_cost.py: its two LiveUpdate columns do the same work; a tiny run writes it all."""

import copy
import json

import pytest
import torch

from bench import update_cost, workloads
from dlrm_core.model import DLRM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_kept_and_recomputing_paths_learn_the_same_factors():
    gen = torch.Generator().manual_seed(0)
    workload = workloads.criteo_workload(0.0005, 0.05, gen)
    batches = workload.batches(6, 64, gen)
    torch.manual_seed(0)
    model = DLRM(workload.config)
    kept = update_cost.LiveUpdatePath(copy.deepcopy(model), keep_served=True)
    recomputing = update_cost.LiveUpdatePath(copy.deepcopy(model), keep_served=False)
    kept.serve(batches)
    for i, batch in enumerate(batches):
        kept.update(batch, float(i + 1))
        recomputing.update(batch, float(i + 1))
    assert kept.trainer.stats.steps == recomputing.trainer.stats.steps > 0
    assert kept.trainer.stats.skipped == 0
    for name, live in kept.trainer.lives.items():
        other = recomputing.trainer.lives[name]
        torch.testing.assert_close(live.A, other.A, atol=1e-5, rtol=0)
        torch.testing.assert_close(live.B, other.B, atol=1e-5, rtol=0)


def test_a_tiny_run_writes_every_column(tmp_path, monkeypatch):
    monkeypatch.setattr(workloads, "OUT_DIR", tmp_path)
    argv = ["--configs", "criteo_reference", "--criteo-scale", "0.0005", "--batch", "64"]
    # one round of 50 batches: a whole adapt period (50 steps) and five syncs
    argv += ["--batches", "4", "--rounds", "1", "--reps", "50", "--sync-every", "10"]
    argv += ["--warmup", "1"]
    payload = update_cost.main(argv)
    written = json.loads((tmp_path / "update_cost.json").read_text())
    (row,) = written["configs"]
    assert row["config"] == "criteo_reference" and row["live_skipped_steps"] == 0
    for key in update_cost.COLUMNS:
        assert key in row
    assert row["ratio"] == pytest.approx(
        row["liveupdate_us_per_event"] / row["cluster_us_per_event"]
    )
    assert len(payload["load_average"]) == 2  # type: ignore[arg-type]


def test_a_run_that_would_leave_out_part_of_a_period_is_refused(capsys):
    """The mean per event must hold LiveUpdate's adapts and the cluster's syncs as often as they
    come: rounds x reps covering part of a period is a one-line CLI error."""
    for argv, period in (
        (["--rounds", "1", "--reps", "12"], "LiveUpdate's adapt periods of 50 batches"),
        (["--rounds", "5", "--reps", "10", "--sync-every", "12"], "sync periods of 12 batches"),
    ):
        with pytest.raises(SystemExit) as refused:
            update_cost.main(argv)
        assert refused.value.code == 2
        assert f"--rounds x --reps must be whole {period}" in capsys.readouterr().err
