"""The delta rebase: the cluster's rows replace the base and drop their correction; every other
row keeps its own. The bounded anchor (the node's and the experiment's one rule): the most
recently used corrected rows within a byte cap carry their change since the snapshot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.rebase import (
    ID_BYTES,
    anchor_caps,
    anchor_rows,
    rebase_rows,
    recent_anchor,
)


def live_table() -> LiveEmbedding:
    torch.manual_seed(0)
    live = LiveEmbedding(nn.EmbeddingBag(20, 4, mode="sum"), LiveEmbeddingConfig(rank=2))
    live.activate(torch.tensor([1, 2, 3, 5]), now=0.0, max_active=10)
    with torch.no_grad():
        live.A.copy_(torch.randn(4, 2))
    return live


def served(live: LiveEmbedding, ids: list[int]) -> torch.Tensor:
    values = torch.tensor(ids)
    return live(values, torch.arange(len(ids))).detach()


def test_rebased_rows_serve_the_cluster_row_others_keep_their_correction() -> None:
    live = live_table()
    before = served(live, [1, 2, 3, 5, 7])
    assert not torch.equal(before[0], live.base.weight[1])  # row 1 has a correction
    new_rows = torch.full((3, 4), 0.25)
    dropped = rebase_rows(live, torch.tensor([2, 5, 7]), new_rows)
    assert dropped == 2  # 2 and 5 were active; 7 was not
    after = served(live, [1, 2, 3, 5, 7])
    for k in (1, 3, 4):  # rows 2, 5, 7: exactly the cluster's row, no correction left
        assert torch.equal(after[k], new_rows[0])
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])  # 1 and 3 kept
    assert live.ids.tolist() == [1, 3]


def test_a_plain_table_is_overwritten_and_bad_rows_are_refused() -> None:
    bag = nn.EmbeddingBag(10, 4, mode="sum")
    assert rebase_rows(bag, torch.tensor([3]), torch.ones(1, 4)) == 0
    assert torch.equal(bag.weight[3].detach(), torch.ones(4))
    with pytest.raises(ValueError, match="rows must be"):
        rebase_rows(bag, torch.tensor([3, 4]), torch.ones(1, 4))


def test_the_change_since_the_snapshot_is_carried_onto_the_cluster_row() -> None:
    live = live_table()
    held = recent_anchor(live, cap=10**6, now=0.0)  # room for every corrected row
    assert held is not None and held.anchor.ids.tolist() == held.active.tolist() == [1, 2, 3, 5]
    then = served(live, [2, 5, 7])
    live.activate(torch.tensor([7]), now=1.0, max_active=10)  # admitted after the snapshot
    with torch.no_grad():  # the node keeps training after the snapshot
        live.A[live.slots(torch.tensor([2]))[0]] += 0.5
        live.A[live.slots(torch.tensor([7]))[0]] = 0.25
    change = served(live, [2, 5, 7]) - then
    new_rows = torch.full((3, 4), 0.25)
    dropped = rebase_rows(live, torch.tensor([2, 5, 7]), new_rows, held)
    assert dropped == 3 and live.ids.tolist() == [1, 3]
    after = served(live, [2, 5, 7])
    assert torch.allclose(after, new_rows + change)
    assert change[0].abs().sum() > 0 and change[2].abs().sum() > 0
    assert torch.equal(change[1], torch.zeros(4))  # 5 did not move since the snapshot


def test_the_anchor_holds_the_most_recently_used_corrected_rows_its_cap_holds() -> None:
    live = LiveEmbedding(nn.EmbeddingBag(20, 4, mode="sum"), LiveEmbeddingConfig(rank=2))
    for t, i in enumerate([5, 1, 3, 2]):  # used last: 2, then 3, 1, 5
        live.activate(torch.tensor([i]), now=float(t), max_active=10)
    with torch.no_grad():
        live.A.copy_(torch.randn(4, 2))
    row = ID_BYTES + 4 * live.dim
    cap = ID_BYTES * 4 + 2 * row + row - 1  # every id and two rows, not three
    held = recent_anchor(live, cap, now=4.0)
    assert held is not None and held.active.tolist() == [1, 2, 3, 5]
    assert held.anchor.ids.tolist() == [2, 3]  # the two most recently used, sorted
    assert held.nbytes == ID_BYTES * 4 + 2 * row <= cap
    assert torch.allclose(held.anchor.rows, served(live, [2, 3]))
    ids = torch.tensor([2, 3, 1, 5, 7])
    assert held.carries(ids).tolist() == [True, True, False, False, True]  # 7: not corrected
    assert recent_anchor(live, ID_BYTES * 4 - 1, now=4.0) is None  # not even its ids
    only_ids = recent_anchor(live, ID_BYTES * 4, now=4.0)
    assert only_ids is not None and only_ids.anchor.ids.numel() == 0

    live.activate(torch.tensor([7]), now=5.0, max_active=10)  # corrected after the snapshot
    with torch.no_grad():
        live.A[live.slots(torch.tensor([1, 7]))[0]] += 0.5
    since = served(live, [7]) - live.base.weight[7].detach()
    cluster = torch.full((5, 4), 0.25)
    rebase_rows(live, ids, cluster, held)
    after = served(live, [2, 3, 1, 5, 7])
    assert torch.equal(after[2:4], cluster[2:4])  # corrected then, not anchored: overwritten
    assert torch.allclose(after[4], cluster[4] + since[0])  # its correction since is carried


def test_a_table_without_a_correction_has_no_anchor() -> None:
    bag = nn.EmbeddingBag(10, 4, mode="sum")
    assert recent_anchor(bag, 10**6, now=0.0) is None
    anchor = anchor_rows(bag, torch.tensor([1, 2]))
    assert anchor.ids.numel() == 0 and anchor.rows.shape == (0, 4)


def test_the_anchor_share_is_split_by_the_tables_budgets() -> None:
    assert anchor_caps(1000, {"a": 3000, "b": 1000}) == {"a": 750, "b": 250}
    assert anchor_caps(1000, {}) == {}
