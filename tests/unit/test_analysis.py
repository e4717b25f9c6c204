import json
import math

import pytest
import torch

from controlplane.cli import main
from dlrm_core.analysis import (
    RunConfig,
    analyze,
    components_for,
    n_components,
    report,
    spectrum,
    top_share,
    train_and_collect,
)
from dlrm_core.commands.analyze import _finite, summarize
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream


def test_components_of_five_percent():
    assert [n_components(0.05, d) for d in (16, 64, 128)] == [1, 3, 6]
    assert n_components(0.25, 16) == 4


def test_spectrum_of_known_matrices():
    torch.manual_seed(0)
    u, v = torch.randn(200, 2), torch.randn(2, 64)
    low = u @ v  # rank 2
    e = spectrum(low, center=False)
    assert e.shape == (64,)
    assert top_share(e, 2) == pytest.approx(1.0, abs=1e-12)
    assert components_for(e, 0.8) <= 2
    # Centring removes a shared offset: rows = common vector + rank-1 spread.
    offset = torch.randn(1, 64) * 10 + torch.randn(300, 1) @ torch.randn(1, 64)
    assert top_share(spectrum(offset, center=True), 1) == pytest.approx(1.0, abs=1e-9)
    assert top_share(spectrum(offset, center=False), 1) < 1.0
    iso = torch.randn(5000, 16)  # isotropic: every component carries ~1/16
    r = report(iso)
    assert r.top["5%"] == pytest.approx(1 / 16, rel=0.2)
    assert r.k80 >= 12 and not r.claim_holds and not r.rank_limited
    zero = spectrum(torch.zeros(3, 4))
    assert math.isnan(top_share(zero, 1)) and components_for(zero, 0.8) == 0


def test_report_flags_rank_limited_tables():
    r = report(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)))
    assert r.rank_limited and r.rows == 3 and r.dim == 16
    assert r.top["25%"] == pytest.approx(1.0)  # 4 components cover a rank-2 centred matrix


def small_stream():
    cfg = SyntheticConfig(
        num_events=3000, batch_size=250, user_rows=300, item_rows=300, context_rows=(20,),
        n_dense=2, seed=5,
    )  # fmt: skip
    s = SyntheticStream(cfg)
    return list(s), s.schema


def test_sgd_update_is_minus_lr_times_summed_gradient():
    batches, schema = small_stream()
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(schema, 8))
    start = [t.weight.detach().clone() for t in model.sparse_arch.tables]
    upd = train_and_collect(model, "sgd", 0.5, [], batches[:6])
    for t, table in enumerate(model.sparse_arch.tables):
        window_ids = torch.cat([b.values[t] for b in batches[:6]]).unique()
        assert torch.equal(upd.rows[t], window_ids)  # sorted touched rows
        assert torch.allclose(upd.update[t], -0.5 * upd.grad[t], atol=1e-6)
        moved = table.weight.detach()[upd.rows[t]] - start[t][upd.rows[t]]
        assert torch.allclose(upd.update[t], moved, atol=1e-6)
    assert 0.0 <= upd.window_auc <= 1.0 and upd.skipped == 0


def test_adagrad_update_differs_from_gradient_direction():
    batches, schema = small_stream()
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(schema, 8))
    start = [t.weight.detach().clone() for t in model.sparse_arch.tables]
    upd = train_and_collect(model, "adagrad", 0.05, batches[:2], batches[2:8])
    g, u = upd.grad[1], upd.update[1]
    assert not torch.allclose(u, -0.05 * g / g.norm() * u.norm(), atol=1e-4)
    # The update covers the window only: rows touched in warm-up alone stay out of it.
    warm_only = set(torch.cat([b.values[1] for b in batches[:2]]).tolist()) - set(
        upd.rows[1].tolist()
    )
    w = model.sparse_arch.tables[1].weight.detach()
    assert all(not torch.equal(w[i], start[1][i]) for i in list(warm_only)[:20])


def test_analyze_records_every_dim_and_optimizer():
    batches, schema = small_stream()
    cfg = RunConfig(dims=(4, 8), optimizers=(("sgd", 0.5), ("adagrad", 0.05)))
    records = analyze(batches, schema, cfg)
    assert [(r["dim"], r["optimizer"]) for r in records] == [
        (4, "sgd"), (4, "adagrad"), (8, "sgd"), (8, "adagrad"),
    ]  # fmt: skip
    assert records[0]["warmup_events"] == 1500 and records[0]["window_events"] == 750
    names = {tb["table"] for tb in records[0]["tables"]}
    assert names == {"user_id", "item_id", "ctx_0"}
    for tb in records[0]["tables"]:
        assert set(tb["grad"]["top"]) == {"5%", "10%", "25%"}
    with pytest.raises(ValueError, match="optimizer must be"):
        RunConfig(optimizers=(("adam", 0.1),))


@pytest.mark.needs_data
def test_cli_on_a_movielens_slice(shared_data, tmp_path, capsys):
    code = main(
        [
            "analyze-gradients", "--data", str(shared_data / "movielens_100k"),
            "--format", "movielens", "--dims", "4", "--max-events", "2048",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| 4 | adagrad |" in out and "claim holds" in out
    text = (tmp_path / "gradient_analysis_movielens.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert [(s["dim"], s["optimizer"]) for s in data["summary"]] == [(4, "sgd"), (4, "adagrad")]
    assert data["runs"][0]["window_events"] == 512  # 30% of the 8 batches of 256 -> 2 batches
    assert (tmp_path / "gradient_analysis_movielens.md").read_text().startswith("Gradient")


def test_summary_counts_only_full_rank_tables_and_takes_true_medians():
    def table(rows, top5):
        r = {"rows": rows, "dim": 4, "top": {"5%": top5}, "k80": 1}
        return {"grad": r, "update": r}

    tops = [0.9, 0.5, 0.85, 0.7]
    rec = {"dim": 4, "optimizer": "sgd", "tables": [table(10, t) for t in tops] + [table(2, 1.0)]}
    (s,) = summarize([rec])
    assert (s["tables"], s["holds_grad"], s["k"]) == (4, 2, 1)
    assert s["median_update_top5"] == pytest.approx(0.775)  # mean of the middle two


def test_json_payload_has_no_nan():
    payload = {"runs": [{"window_auc": math.nan, "dim": 4}], "x": [math.inf, 0.5]}
    assert _finite(payload) == {"runs": [{"window_auc": None, "dim": 4}], "x": [None, 0.5]}


def test_cli_reports_bad_input(tmp_path, capsys):
    code = main(["analyze-gradients", "--data", str(tmp_path), "--format", "movielens"])
    assert code == 2 and "neither u.data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze-gradients", "--data", str(tmp_path), "--format", "criteo", "--dims", "x"])
