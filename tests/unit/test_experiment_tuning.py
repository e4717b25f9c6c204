"""Tuning on the pretraining head: the cluster lr, then LiveUpdate's lr_a, lr_b, tau, r_max."""

from __future__ import annotations

from dlrm_core.experiment.tuning import tune
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

from .test_experiment_harness import small_config


def test_tau_and_r_max_are_picked_on_the_heads_validation_split_and_logged() -> None:
    events = 3_000
    stream = SyntheticStream(
        SyntheticConfig(
            seed=0,
            num_events=events,
            batch_size=128,
            events_per_second=10,
            user_rows=1_000,
            item_rows=1_000,
        )
    )  # fmt: skip (2% holds a floor)
    config = small_config(("delta_sync", "liveupdate"))
    tuned, log = tune(stream.schema, lambda: iter(stream), events, config, lr_grid=(0.05,),
                      lr_a_grid=(0.2,), lr_b_grid=(1e-3,), tau_grid=(0.5, 0.99),
                      r_max_grid=(2, 8))  # fmt: skip
    # validation is the head's last 20%: the scored windows start after the head
    assert log["head_events"] == int(events * config.pretrain_fraction)
    assert log["fit_events"] == int(0.8 * log["head_events"])
    assert set(log["tau"]) == {"0.5", "0.99"} and set(log["r_max"]) == {"2", "8"}
    for knob in ("tau", "r_max"):
        scores = log[knob]
        best = max(scores, key=lambda k: scores[k])
        assert float(best) == log["chosen"][knob] == getattr(tuned.live, knob)
    # a cap of 2 below the initial rank 4 lowers the initial rank with it
    assert tuned.live.initial_rank <= tuned.live.r_max
