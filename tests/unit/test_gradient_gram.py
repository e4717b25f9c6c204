"""The rank controller's gradient Gram held packed (its upper triangle): the same statistics as
the (D, D) matrix, in the bytes the budget plans."""

import torch
from torch import nn

from dlrm_core.experiment.memory import held_tensor_bytes, model_storages
from dlrm_core.gradient_gram import PackedGram
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.row_budget import gram_bytes

D = 16


def test_the_packed_gram_equals_the_full_one_on_random_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    packed, full = PackedGram(D), torch.zeros(D, D, dtype=torch.float64)
    for _ in range(20):
        g = torch.randn(int(torch.randint(1, 300, (1,), generator=gen)), D, generator=gen)
        packed.add(g.T @ g)
        full += g.double().T @ g.double()
    got = packed.full().double()
    assert torch.equal(got, got.T)
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-6 * float(full.abs().max()))
    assert abs(packed.trace() - float(full.trace())) <= 1e-6 * float(full.trace())
    packed.reset()
    assert packed.trace() == 0.0 and not packed.full().any()


def test_a_controller_holds_the_gram_packed_and_plans_what_it_holds() -> None:
    live = LiveEmbedding(nn.EmbeddingBag(5000, D, mode="sum"), LiveEmbeddingConfig(rank=4))
    ctl = RankController(live, "t", RankPolicy(r_max=8, admit_after=1), 20_000)
    ctl.observe_gradient(torch.randn(64, D))
    assert ctl.gram_bytes == gram_bytes(D) == 4 * D * (D + 1) // 2 == 544  # 1,024 unpacked
    assert held_tensor_bytes(ctl, model_storages(live.base)) == ctl.accounted_bytes()
