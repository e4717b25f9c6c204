"""A node's LoRA budget: one pool of the policy's percentage of all its tables' bytes, the hard
cap of its proportional memory (issue 14), split once here for the runtime (which tables get
shared factor slots, their capacities) and the trainer (each table's budget, the feed's backlog).

Out of the pool come, once per node: the page floor of its shared-memory slots
(row_budget.NODE_PAGE_FLOOR: every slot is one arena for all tables, so a node pays one partly
used page a slot, however many tables it has), the feed's backlog share and, while the policy
sets a rebase period, a delta rebase's anchor share (dlrm_core.rebase.ANCHOR_SHARE); per
trained table: its fold records (FoldBitmap, a flag per base page) and its floor (B and its
optimizer state at r_min, the smallest index, its copies' B, and MIN_TABLE_ROWS active rows).
What is left goes to the trained tables in proportion to their bytes, on top of their floors.
Tables are trained largest first while the pool holds their floors; a table left out, or a node
whose pool cannot hold one table's floor, is told by ``untrained`` with the reason (the runtime
reports it as an event). The anchor's share comes out of what the floors leave, never out of
a floor: a rebase period never stops a table from training (on a node too small for both, the
anchor holds less, and a rebase whose anchor cannot hold a table's ids overwrites its
corrected rows, the fallback nodeworker/trainer_rebase.py logs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dlrm_core.fold_bitmap import FoldBitmap
from dlrm_core.model import DLRMConfig
from dlrm_core.rank_policy import RankPolicy, min_budget_bytes
from dlrm_core.rebase import ANCHOR_SHARE
from dlrm_core.row_budget import NODE_PAGE_FLOOR, PAGE, capacity_plan
from nodeworker import protocol
from nodeworker.tuned_top import tuning_bytes

# the share of the pool that joined rows waiting for the trainer (the feed's backlog) may
# hold: a trainer that falls behind drops its oldest batches rather than outgrow it (the
# node's default backlog of 72 batches of 256 rows is ~2 MB, 78% of a 2% budget of 128 MB)
BACKLOG_SHARE = 0.15
# a table is trained only if its budget holds at least this many active rows at r_min
MIN_TABLE_ROWS = 16
# the shared factor slots hold any budget a policy may set (protocol: memory_budget_pct <= 10);
# the files are sparse, so the room costs nothing until a version uses it
CAPACITY_PCT = 10.0


def pct_bytes(nbytes: int, pct: float) -> int:
    return int(math.floor(nbytes * pct / 100.0))


def record_bytes(rows: int, dim: int) -> int:
    """A trained table's fold records on a node: a bit per row (FoldBitmap) and a flag per base
    page (nodeworker/base_pages.py PrivateBasePages)."""
    return FoldBitmap.nbytes_for(rows) + -(-rows * dim * 4 // PAGE)


@dataclass(frozen=True)
class NodeBudget:
    pct: float
    total: int  # pct of all the node's tables' bytes: the cap of the whole proportional part
    backlog: int  # the feed's backlog may hold this much
    tables: dict[str, int]  # a trained table's budget for its LoRA state and its node copies
    shares: dict[str, int]  # a trained table's share of ``total`` (its budget, its records
    #                         and its part of the page floor and backlog, by its bytes)
    untrained: dict[str, str] = field(default_factory=dict)  # table -> why it gets no budget
    anchor: int = 0  # a delta rebase's anchor may hold this much (ANCHOR_SHARE)


def plan_node_budget(
    sizes: Mapping[str, tuple[int, int]],
    pct: float,
    table_floor: int,
    among: tuple[str, ...] | None = None,
    dense: int = 0,
    anchor_share: float = 0.0,
) -> NodeBudget:
    """The budget of a node whose tables have (rows, dim) ``sizes`` at ``pct`` percent, each
    trained table needing at least ``table_floor`` bytes (rank_policy.min_budget_bytes with
    the node's copies). ``among``: train only these (a trainer keeps the tables it started
    with when a policy changes; one it can no longer hold is untrained, with the reason)."""
    nbytes = {name: rows * dim * 4 for name, (rows, dim) in sizes.items()}
    total = pct_bytes(sum(nbytes.values()), pct)
    backlog = int(total * BACKLOG_SHARE)
    pool = total - backlog - NODE_PAGE_FLOOR - dense  # dense: the top MLP's tuning
    untrained: dict[str, str] = {}
    chosen: list[str] = []
    need = 0  # the floors and records of the tables chosen so far
    for name in sorted(nbytes, key=lambda n: (-nbytes[n], n)):
        cost = table_floor + record_bytes(*sizes[name])
        if among is not None and name not in among:
            untrained[name] = "not trained since the trainer started"
        elif need + cost <= pool:
            chosen.append(name)
            need += cost
        else:
            untrained[name] = (
                f"{pct:g}% of the node's {sum(nbytes.values())} bytes of tables is {total} "
                f"bytes; less the node's page floor ({NODE_PAGE_FLOOR}), the feed's backlog "
                f"share ({backlog}) and {len(chosen)} larger table(s) ({need}) it does not "
                f"hold this table's floor and fold records ({cost})"
            )
    anchor = max(0, min(int(total * anchor_share), pool - need))
    trained_bytes = sum(nbytes[n] for n in chosen)
    left = pool - need - anchor
    tables = {
        n: table_floor + left * nbytes[n] // trained_bytes for n in chosen
    }  # fmt: skip
    tables = {n: min(b, capacity_budget(nbytes[n], table_floor)) for n, b in tables.items()}
    fixed = total - sum(tables.values()) - sum(record_bytes(*sizes[n]) for n in chosen)
    shares = {
        n: tables[n] + record_bytes(*sizes[n]) + fixed * nbytes[n] // trained_bytes for n in chosen
    }
    return NodeBudget(pct, total, backlog, tables, shares, untrained, anchor)


def capacity_budget(table_bytes: int, table_floor: int) -> int:
    """The most budget a table's shared factor slot is sized for (any policy's)."""
    return pct_bytes(table_bytes, CAPACITY_PCT) + table_floor


def rank_policy(policy: protocol.Policy, dim: int) -> RankPolicy:
    """The RankPolicy of a node policy."""
    r_max = min(policy.r_max, dim)
    return RankPolicy(
        tau=policy.tau,
        r_min=min(policy.r_min, r_max),
        r_max=r_max,
        max_age=policy.prune_age_s,
        fold_evicted=policy.prune_action == "fold",
    )


def serving_key_bytes(table_rows: tuple[int, ...] | list[int]) -> int:
    """Bytes of a serving index's keys (ServingDelta.from_factors): int32 while all tables'
    rows fit in one int32 key space, the most a group can span."""
    return 4 if sum(table_rows) <= 2**31 - 1 else 8


def node_table_floor(config: DLRMConfig, policy: protocol.Policy) -> int:
    """The least budget a table of this node trains with: MIN_TABLE_ROWS active rows at
    r_min with its copies (a floor that holds no row would take budget to train nothing)."""
    dim = config.embedding_dim
    r_min = rank_policy(policy, dim).r_min
    key_bytes = serving_key_bytes(config.table_sizes)
    lo = hi = min_budget_bytes(rank_policy(policy, dim), dim, key_bytes)
    while capacity_plan(hi, r_min, dim, False, MIN_TABLE_ROWS, key_bytes)[0] < MIN_TABLE_ROWS:
        lo, hi = hi, 2 * hi
    while lo < hi:  # the least budget holding MIN_TABLE_ROWS rows
        mid = (lo + hi) // 2
        if capacity_plan(mid, r_min, dim, False, MIN_TABLE_ROWS, key_bytes)[0] < MIN_TABLE_ROWS:
            lo = mid + 1
        else:
            hi = mid
    return hi


def node_budget(
    config: DLRMConfig, policy: protocol.Policy, among: tuple[str, ...] | None = None
) -> NodeBudget:
    """plan_node_budget for a node's model and policy."""
    sizes = {
        name: (rows, config.embedding_dim)
        for name, rows in zip(config.feature_names, config.table_sizes, strict=True)
    }
    return plan_node_budget(
        sizes,
        policy.memory_budget_pct,
        node_table_floor(config, policy),
        among,
        tuning_bytes(config, policy),
        ANCHOR_SHARE if policy.rebase_period_s > 0 else 0.0,
    )
