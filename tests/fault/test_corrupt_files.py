"""A corrupt factor snapshot or base checkpoint is refused with a clear error, and the node goes
on serving the version it had (the runtime for real, with its spawned trainer process)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.table_factors import import_factors
from nodeworker.checkpoint_files import REFUSED
from nodeworker.control_socket import InvalidRequest
from tests.integration.test_node_runtime import STREAM, assert_serves, running_node, train_until
from tests.services import wait_until


def corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors
    path.write_bytes(bytes(data))


def user_factors(path) -> LiveEmbedding:
    live = LiveEmbedding(torch.nn.EmbeddingBag(STREAM.user_rows, 16, mode="sum"))
    import_factors(live, path, "user_id")
    return live


def test_a_corrupt_snapshot_is_refused_and_the_previous_one_restored(tmp_path):
    with running_node(tmp_path, name="t-corrupt") as (runtime, traffic):
        train_until(runtime, traffic, 200)
        good = runtime.operations.snapshot()
        train_until(runtime, traffic, 400)
        bad = runtime.operations.snapshot()
    good_dir = runtime.snapshots.root / good["snapshot"]
    saved = user_factors(good_dir / "user_id.factors")
    corrupt(runtime.snapshots.root / bad["snapshot"] / "user_id.factors")

    with running_node(tmp_path, name="t-corrupt") as (again, _):
        refused = [e.detail for e in again.events if "refused" in e.detail]
        assert refused and refused[0]["refused"] == bad["snapshot"]
        assert "checksum mismatch" in refused[0]["error"]
        restored = [e.detail for e in again.events if "restored" in e.detail]
        assert restored and restored[0]["restored"] == good["snapshot"]
        wait_until(lambda: again.shared.version > 0, 30, "the restored version")
        assert_serves(again, "user_id", saved)
        scores, _, _ = again.predict(next(traffic))
        assert bool(torch.isfinite(scores).all())


def test_a_corrupt_checkpoint_is_refused_and_the_old_version_keeps_serving(tmp_path):
    with running_node(tmp_path, name="t-badckpt") as (runtime, traffic):
        train_until(runtime, traffic, 100)
        request = next(traffic)
        before, _, version = runtime.predict(request)
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes((tmp_path / "base.ckpt").read_bytes())
        corrupt(bad)
        with pytest.raises(InvalidRequest) as refused:
            runtime.operations.rebase({"location": str(bad)})
        assert "checksum mismatch" in refused.value.fields["checkpoint"]
        # a sound checkpoint outside the checkpoint directory (the start-up checkpoint's folder)
        # is refused like a missing one, whatever its checksum
        elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
        elsewhere.mkdir()
        outside = elsewhere / "base-copy.ckpt"
        outside.write_bytes((tmp_path / "base.ckpt").read_bytes())
        digest = hashlib.sha256(outside.read_bytes()).hexdigest()
        for location in (str(outside), f"node/../../{elsewhere.name}/base-copy.ckpt"):
            with pytest.raises(InvalidRequest) as refused:
                runtime.operations.rebase({"location": location, "checksum": f"sha256:{digest}"})
            assert refused.value.fields == REFUSED
        assert runtime.trainer.alive
        after, _, still = runtime.predict(request)
        assert still >= version and bool(torch.isfinite(after).all())
        assert not any(e.kind == "rebase" for e in runtime.events)
