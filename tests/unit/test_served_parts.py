"""The bottom MLP's output kept from serving (ServedParts) instead of recomputed in training."""

import copy

import pytest
import torch

from dlrm_core.batch import ServedParts, SparseBatch
from dlrm_core.label_join import LabelJoin
from dlrm_core.trainer import LiveTrainer
from tests.unit.test_trainer import CFG, pretrained, trainer_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def twin_trainers(**kw):
    model, stream = pretrained(steps=30)
    twin = copy.deepcopy(model)
    return LiveTrainer(model, trainer_config(**kw)), LiveTrainer(twin, trainer_config(**kw)), stream


def factors(trainer):
    return {
        name: (live.A.detach().clone(), live.B.detach().clone())
        for name, live in trainer.lives.items()
    }


def test_training_on_kept_outputs_matches_recomputing_them():
    kept, recomputing, stream = twin_trainers(reuse=1)
    for step in range(12):
        batch = stream.batch()
        _, served = kept.score_and_keep(batch)
        assert served.served is not None and served.served.bottom.shape == (64, CFG.embedding_dim)
        assert kept._kept_bottom(served) is served.served.bottom  # used, not recomputed
        a = kept.train_step(served, now=float(step))
        b = recomputing.train_step(batch, now=float(step))
        assert a.skipped is None and b.skipped is None
        assert abs(a.loss - b.loss) <= 1e-5
    assert kept.stats.steps == recomputing.stats.steps == 12
    for name, (a_rows, b_rows) in factors(kept).items():
        other_a, other_b = factors(recomputing)[name]
        torch.testing.assert_close(a_rows, other_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(b_rows, other_b, atol=1e-5, rtol=0)


def test_serve_keeps_the_bottom_output_and_the_join_counts_its_bytes():
    kept, recomputing, stream = twin_trainers(label_delay=2.0)
    batch = stream.batch()
    torch.testing.assert_close(kept.serve(batch), recomputing.score(batch))
    held = kept.join.nbytes()
    bare = LabelJoin(2.0, 600.0, 1000)
    bare.add_served(batch, 0.0)
    assert held - bare.nbytes() == 64 * CFG.embedding_dim * 4  # B x D float32 per batch
    assert kept.memory_account().pending == held


def test_a_kept_output_of_other_bottom_weights_is_recomputed():
    """A rebase loads new MLP weights in place: outputs kept before it are not used."""
    kept, recomputing, stream = twin_trainers()
    batch = stream.batch()
    _, served = kept.score_and_keep(batch)
    for trainer in (kept, recomputing):  # the same new bottom MLP in both
        new = {k: v + 0.1 for k, v in trainer.model.dense_arch.state_dict().items()}
        trainer.model.dense_arch.load_state_dict(new)
    stale = kept._kept_bottom(served)
    assert stale is None
    a, b = kept.train_step(served, 0.0), recomputing.train_step(batch, 0.0)
    assert abs(a.loss - b.loss) <= 1e-6
    _, fresh = kept.score_and_keep(batch)
    assert kept._kept_bottom(fresh) is fresh.served.bottom  # type: ignore[union-attr]


def test_a_kept_output_of_another_trainer_is_recomputed():
    kept, recomputing, stream = twin_trainers()
    _, served = recomputing.score_and_keep(stream.batch())
    assert kept._kept_bottom(served) is None


def test_selected_and_concatenated_batches_keep_their_rows_outputs():
    trainer, _, stream = twin_trainers()
    _, one = trainer.score_and_keep(stream.batch(8))
    _, two = trainer.score_and_keep(stream.batch(8))
    assert one.served is not None and two.served is not None
    picked = one.select([5, 1])
    assert picked.served is not None
    torch.testing.assert_close(picked.served.bottom, one.served.bottom[[5, 1]])
    joined = SparseBatch.concat([one, two.with_labels(two.labels)])
    assert joined.served is not None
    torch.testing.assert_close(
        joined.served.bottom, torch.cat([one.served.bottom, two.served.bottom])
    )
    assert SparseBatch.concat([one, stream.batch(8)]).served is None  # one batch has none
    other = two.with_served(ServedParts(two.served.bottom, object()))
    assert SparseBatch.concat([one, other]).served is None  # kept from other weights
    assert one.nbytes - stream.batch(8).nbytes == 8 * CFG.embedding_dim * 4


def test_a_kept_output_must_fit_the_batch():
    trainer, _, stream = twin_trainers()
    batch = stream.batch(8)
    for bad in (torch.zeros(7, 8), torch.zeros(8), torch.zeros(8, 8, dtype=torch.float64)):
        with pytest.raises(ValueError, match="served.bottom"):
            batch.with_served(ServedParts(bad, object()))
