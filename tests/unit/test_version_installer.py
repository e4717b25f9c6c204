"""The version installer's patch-ordering and epoch protocol, without a trainer process: the
test publishes factor versions into shared memory and sends folded rows as the trainer would."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dlrm_core.model import DLRM, DLRMConfig, base_weight
from nodeworker.feed import FeedWriter
from nodeworker.feed_rings import FeedRings
from nodeworker.inference import InferencePath
from nodeworker.qos import QosController
from nodeworker.runtime_metrics import RuntimeMetrics
from nodeworker.shared_memory import SharedFactors
from nodeworker.trainer_messages import FoldedRows
from nodeworker.version_installer import VersionInstaller
from tests.unit.test_shared_memory import CAPS, FEATURES, TABLE_ROWS, factors_of, serving_of


@pytest.fixture
def parts(tmp_path):
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(FEATURES, TABLE_ROWS, 2, 8, (8,), (4, 1))).eval()
    shared = SharedFactors(tmp_path, CAPS, create=True)
    rings = FeedRings.open(tmp_path, create=True, served_bytes=1 << 16, label_bytes=1 << 12)
    metrics = RuntimeMetrics()
    inference = InferencePath(model, FeedWriter(rings, 30.0, 64), QosController(), metrics)
    yield VersionInstaller(inference, shared, metrics), shared, model
    rings.close()


def publish(shared: SharedFactors, version: int, aux: int) -> None:
    """Version ``version``, preceded by ``aux`` FoldedRows messages in all."""
    tables = {name: factors_of(version, cap) for name, cap in CAPS.items()}
    shared.write(version, float(version), tables, serving_of(version, tables), aux=aux)


def folded(row: int, value: float) -> FoldedRows:
    return FoldedRows({"user": (np.array([row]), np.full((1, 8), value, np.float32))})


def test_a_version_waits_for_its_folded_rows_and_installs_with_them(parts, monkeypatch):
    installer, shared, model = parts
    monkeypatch.setattr("nodeworker.version_installer.FOLDED_WAIT_S", 0.05)
    publish(shared, 1, aux=1)
    installer.install_newest()  # its one FoldedRows message has not arrived: not installed
    assert installer.inference.version == 0 and installer.inference.delta is None

    installer.receive(folded(5, 7.0), epoch=0)
    installer.install_newest()
    delta, version = installer.inference.served()
    assert version == 1 and delta is not None and delta.version == 1
    assert bool((base_weight(model, "user")[5] == 7.0).all()) and installer.applied == 1

    installer.receive(folded(6, 8.0), epoch=0)  # v2 needs both
    publish(shared, 2, aux=2)
    assert not shared.writable()  # v1 serves from one slot, v2 waits in the other
    installer.install_newest()
    assert installer.inference.version == 2 and installer.applied == 2
    assert bool((base_weight(model, "user")[6] == 8.0).all())
    assert shared.writable()  # the installer said so: v1's slot is free


def test_a_new_epoch_drops_the_old_trainers_versions_and_late_rows(parts):
    installer, shared, model = parts
    installer.receive(folded(5, 7.0), epoch=0)
    publish(shared, 1, aux=1)
    installer.install_newest()
    assert installer.inference.version == 1

    installer.receive(folded(6, 9.0), epoch=0)  # sent before the rebase, applied by nobody
    with installer.inference.exclusive:
        assert installer.forget_versions() == 1
    assert installer.inference.served() == (None, 1)  # the bare base
    assert shared.writable()  # inference reads no slot now
    installer.receive(folded(7, 9.0), epoch=0)  # a late message of the replaced trainer
    assert installer.applied == 0

    # the new trainer counts its messages from 0 again: its version 2 has aux 0
    publish(shared, 2, aux=0)
    installer.install_newest()
    assert installer.inference.version == 2
    assert not bool((base_weight(model, "user")[6] == 9.0).any())
    assert not bool((base_weight(model, "user")[7] == 9.0).any())


def test_an_install_waiting_for_rows_gives_up_when_the_epoch_changes(parts):
    installer, shared, _ = parts
    publish(shared, 1, aux=1)  # its rows never come: the trainer was replaced meanwhile
    waiting = threading.Thread(target=installer.install_newest)
    waiting.start()
    with installer.inference.exclusive:
        installer.forget_versions()
    waiting.join(timeout=5)
    assert not waiting.is_alive() and installer.inference.version == 1
    assert installer.inference.delta is None  # version 1 was built on the old base


def test_the_tuned_top_mlp_serves_with_its_version_and_not_before(parts, monkeypatch):
    installer, shared, model = parts
    monkeypatch.setattr("nodeworker.version_installer.FOLDED_WAIT_S", 0.05)
    last = model.over_arch.mlp[-1]
    before = last.weight.detach().clone()
    tuned = np.full(tuple(last.weight.shape), 0.25, np.float32)
    installer.receive(FoldedRows(top={"over_arch.mlp.2.weight": tuned}), epoch=0)
    assert torch.equal(last.weight, before)  # received, not served: its version is not in
    publish(shared, 1, aux=1)
    installer.install_newest()
    assert installer.inference.version == 1
    assert torch.equal(last.weight, torch.from_numpy(tuned))

    installer.forget_versions()  # a rebase: a late top of the old trainer is never written
    installer.receive(FoldedRows(top={"over_arch.mlp.2.weight": tuned * 2}), epoch=0)
    publish(shared, 2, aux=1)
    installer.install_newest()
    assert torch.equal(last.weight, torch.from_numpy(tuned))
