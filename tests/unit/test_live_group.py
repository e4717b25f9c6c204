"""The LiveTrainer's fused LiveGroups against the per-table LiveEmbedding math."""

import copy

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.batch import SparseBatch
from dlrm_core.checkpoint import read_container
from dlrm_core.live_embedding import LiveEmbeddingConfig, attach_live_embeddings
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.table_factors import FACTORS_FORMAT_VERSION, FACTORS_KIND, export_factors
from dlrm_core.trainer import LiveTrainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES, ROWS = ("user", "item", "ctx"), (120, 40, 60)
CFG = DLRMConfig(NAMES, ROWS, 2, 8, (16, 8), (16, 1))
# user: room for ~20 rows (evictions); item, ctx: room for all rows
BUDGETS = {"user": 1200, "item": 6000, "ctx": 8000}


def batches(count, size=48, seed=3):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        # multi-hot bags of 0, 1 or 2 ids, so EmbeddingBag sums and empty bags are covered;
        # ctx has no ids in the first batches: a table without active rows next to trained ones
        lengths = [
            torch.randint(0, 3 if i >= 3 or n != "ctx" else 1, (size,), generator=gen)
            for n in NAMES
        ]
        offsets = tuple(torch.cumsum(n, 0) - n for n in lengths)
        values = tuple(
            torch.randint(0, rows, (int(n.sum()),), generator=gen)
            for rows, n in zip(ROWS, lengths, strict=True)
        )
        labels = (torch.rand(size, generator=gen) < 0.4).float()
        out.append(
            SparseBatch(
                NAMES,
                values,
                offsets,
                torch.randn(size, 2, generator=gen),
                labels,
                torch.full((size,), float(i), dtype=torch.float64),
                torch.arange(i * size, (i + 1) * size),
            )
        )
    return out


# The fused path runs in the training kernel (float32) and sums in another order than the
# per-table modules; Adagrad and Adam normalise their steps, which amplifies those rounding
# differences over 12 steps (each single step agrees to 1e-5: test_training_kernel.py), up to
# ~1.4e-5 on factors of ~0.3 here.
TOL = {"atol": 5e-5, "rtol": 1e-4}


def test_fused_steps_match_the_per_table_math():
    torch.manual_seed(0)
    model = DLRM(CFG)
    reference = copy.deepcopy(model).requires_grad_(False)
    config = TrainerConfig(
        live=LiveEmbeddingConfig(rank=2, scale=0.5),
        policy=RankPolicy(tau=0.9, r_min=1, r_max=4, grow_residual=0.3),
        lr_a=0.3,
        lr_b=0.05,
        room_every=2,
        adapt_every=4,
        publish_every=10**6,
    )
    trainer = LiveTrainer(model, config, budgets=BUDGETS)
    lives = attach_live_embeddings(reference.sparse_arch, list(NAMES), config.live)
    controllers = {n: RankController(lives[n], n, config.policy, BUDGETS[n]) for n in NAMES}
    groups_seen = set()
    for step, batch in enumerate(batches(12), start=1):
        now = float(step)
        assert trainer.train_step(batch, now).skipped is None
        groups_seen.add(len(trainer.groups.groups))
        # the same step, table by table, through LiveEmbedding.forward and .step
        for name, ctl in controllers.items():
            ctl.admit(batch.feature(name)[0], now)
        F.binary_cross_entropy_with_logits(reference(batch), batch.labels).backward()
        for live in lives.values():
            live.step(config.lr_a, config.lr_b)
        if step % config.room_every == 0:
            for name, ctl in controllers.items():
                ctl.make_room(batch.feature(name)[0], now)
        if step % config.adapt_every == 0:
            for ctl in controllers.values():
                ctl.prune_idle(now)
                ctl.adapt(now)
        if any(ctl.fold_log_over() for ctl in controllers.values()):  # the trainer publishes
            for live in lives.values():
                live.take_folded()
        for name in NAMES:
            fused, ref = trainer.lives[name], lives[name]
            assert torch.equal(fused.ids, ref.ids), (step, name)
            torch.testing.assert_close(fused.A.detach(), ref.A.detach(), **TOL)
            torch.testing.assert_close(fused.B.detach(), ref.B.detach(), **TOL)
            torch.testing.assert_close(fused.a_accum, ref.a_accum, **TOL)
            assert fused.last_used.tolist() == ref.last_used.tolist()
    events = trainer.drain_events()
    ref_events = sorted(
        (e for c in controllers.values() for e in c.events), key=lambda e: e.timestamp
    )
    assert [(e.table, e.kind, e.from_value, e.to_value) for e in events] == [
        (e.table, e.kind, e.from_value, e.to_value) for e in ref_events
    ]
    kinds = {(e.kind, e.reason) for e in events}
    assert ("prune", "lru") in kinds  # evictions happened
    assert any(kind == "rank" for kind, _ in kinds)  # and rank changes
    assert max(groups_seen) > 1  # tables of several ranks, moving between groups
    # the fused forward serves what the per-table modules serve
    probe = batches(1, seed=9)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            trainer.score(probe), torch.sigmoid(model(probe)), atol=1e-6, rtol=1e-6
        )
        torch.testing.assert_close(trainer.score(probe), torch.sigmoid(reference(probe)), **TOL)


def test_exported_factors_of_a_grouped_table_hold_only_that_table(tmp_path):
    torch.manual_seed(0)
    config = TrainerConfig(policy=RankPolicy(r_min=1, r_max=4), publish_every=10**6)
    trainer = LiveTrainer(DLRM(CFG), config, budgets=BUDGETS)
    for step, batch in enumerate(batches(3), start=1):
        trainer.train_step(batch, float(step))
    shares = [
        live.A.untyped_storage().nbytes() > live.A.numel() * 4 for live in trainer.lives.values()
    ]
    assert any(shares)  # A is a view of its group's buffer
    for name, live in trainer.lives.items():
        export_factors(live, tmp_path / name, name)
        _, tensors = read_container(tmp_path / name, FACTORS_KIND, FACTORS_FORMAT_VERSION)
        for key, t in tensors.items():
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), (name, key)
        ids, order = torch.sort(live.ids)  # exported sorted by id
        assert torch.equal(tensors["ids"], ids) and torch.equal(tensors["a"], live.A[order])
