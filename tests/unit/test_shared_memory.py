import multiprocessing as mp
import time

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import TableFactors
from nodeworker.shared_memory import (
    SharedFactors,
    TableCapacity,
    map_base_tables,
    write_base_tables,
)

CAPS = {
    "user": TableCapacity(rows=64, a_floats=64 * 4, rank=4, dim=8),
    "item": TableCapacity(rows=16, a_floats=64, rank=4, dim=8),
}
# the model's features: "ctx" is not trained, so the shared tables are features 0 and 2
FEATURES, TABLE_ROWS = ("user", "ctx", "item"), (200, 10, 50)


def factors_of(version: int, cap: TableCapacity) -> TableFactors:
    """Every value of version v is v; its shape depends on v too."""
    r = 1 + version % cap.rank
    n = min(cap.rows, cap.a_floats // r, 1 + version % 50)
    return TableFactors(
        torch.arange(n, dtype=torch.int64) * 3,
        torch.full((n, r), float(version)),
        torch.full((r, cap.dim), float(version)),
        float(version),
    )


def serving_of(version: int, tables) -> ServingDelta:
    return ServingDelta.from_factors(version, FEATURES, TABLE_ROWS, tables)


def publish(shared: SharedFactors, version: int, tables=None) -> None:
    tables = tables or {name: factors_of(version, cap) for name, cap in CAPS.items()}
    shared.write(version, version / 10, tables, serving_of(version, tables), aux=version)


def check_serving(snapshot) -> None:
    """One version's layout: A is a zero row then v's rows, B * scale is v * v, and the index
    finds every id of both tables."""
    v = snapshot.version
    (group,) = snapshot.delta.groups  # both tables have rank 1 + v % 4: one group
    n = {name: factors_of(v, cap).num_active for name, cap in CAPS.items()}
    assert group.features == (0, 2) and group.key_offsets.tolist() == [0, 200], v
    assert group.a.shape == (1 + n["user"] + n["item"], 1 + v % 4), v
    assert bool((group.a[0] == 0).all()) and bool((group.a[1:] == v).all()), v
    assert bool((group.b == v * v).all()), v
    keys = torch.cat([torch.arange(n["user"]) * 3, torch.arange(n["item"]) * 3 + 200])
    assert group.index.rows(keys).tolist() == list(range(1, len(keys) + 1)), v
    assert snapshot.created_at == v / 10 and snapshot.aux in (0, v)


def _writer(directory, stop, last_written):
    shared = SharedFactors(directory, CAPS, create=False)
    version = 2
    while not stop.is_set() and version < 1_000_000:
        if not shared.writable():  # inference still reads or serves the other slot
            continue
        publish(shared, version)
        last_written.value = version
        version += 1


def test_no_torn_reads_while_versions_swap_from_another_process(tmp_path):
    shared = SharedFactors(tmp_path, CAPS, create=True)
    assert shared.read_serving() is None and shared.version == 0
    publish(shared, 1)
    ctx = mp.get_context("spawn")
    stop, last_written = ctx.Event(), ctx.Value("q", 1)
    proc = ctx.Process(target=_writer, args=(tmp_path, stop, last_written))
    proc.start()
    # The writer runs until the reader has seen enough versions, so the two overlap however
    # busy the machine is; the deadline only bounds a broken writer.
    seen, reads, last = set(), 0, 0
    deadline = time.monotonic() + 120
    try:
        while len(seen) < 50 and proc.is_alive() and time.monotonic() < deadline:
            serving = shared.read_serving(newer_than=last)
            if serving is None:
                continue
            check_serving(serving)  # read in place: whole while it is not acknowledged
            seen.add(serving.version)
            assert last < serving.version  # never goes back
            last = serving.version
            shared.installed(last)  # as the installer does after its swap
            reads += 1
    finally:
        stop.set()
        proc.join(timeout=30)
    assert proc.exitcode == 0
    assert len(seen) >= 50, f"only {len(seen)} versions seen in {reads} reads"
    newer = shared.read_serving(newer_than=last - 1)
    assert newer is not None and newer.version >= last
    assert shared.read_serving(newer_than=shared.version) is None


def test_the_writer_waits_until_inference_installed_the_newest_version(tmp_path):
    """Inference serves a version from its slot in place: the writer may fill the other slot
    only once inference has installed the newest version, and never the slot being served."""
    shared = SharedFactors(tmp_path, CAPS, create=True)
    assert shared.writable()  # nothing published yet, nothing served
    publish(shared, 1)
    served = shared.read_serving()
    assert not shared.writable()
    with pytest.raises(RuntimeError, match="has not installed version 1"):
        publish(shared, 2)
    assert shared.version == 1
    shared.installed(1)
    publish(shared, 2)  # fills the other slot: version 1 stays whole as it serves
    check_serving(served)
    assert not shared.writable()
    newer = shared.read_serving(newer_than=1)
    check_serving(newer)
    shared.installed(1)  # a late acknowledgement never goes back
    assert not shared.writable()
    shared.installed(2)
    publish(shared, 3)
    check_serving(newer)


def test_the_copied_serving_layout_scores_like_the_one_the_writer_built(tmp_path):
    shared = SharedFactors(tmp_path, CAPS, create=True)
    torch.manual_seed(0)
    tables = {
        "user": TableFactors(torch.tensor([1, 5, 199]), torch.randn(3, 2), torch.randn(2, 8), 0.5),
        "item": TableFactors(torch.tensor([0, 49]), torch.randn(2, 3), torch.randn(3, 8), 2.0),
    }
    built = serving_of(7, tables)
    shared.write(7, 0.7, tables, built, aux=3)
    copied = shared.read_serving()
    assert (copied.version, copied.delta.version, copied.aux) == (7, 7, 3)
    assert len(copied.delta.groups) == 2  # ranks 2 and 3
    model = DLRM(DLRMConfig(FEATURES, TABLE_ROWS, 2, 8, (8,), (4, 1))).eval()
    batch = SparseBatch(
        FEATURES,
        (torch.tensor([1, 5, 7, 199]), torch.tensor([3, 4]), torch.tensor([0, 49, 20])),
        (torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 1])),
        torch.randn(2, 2),
        torch.zeros(2),
        torch.zeros(2, dtype=torch.float64),
        torch.arange(2),
    )
    with torch.no_grad():
        plain = model(batch)
        want = model(batch, delta=built)
        got = model(batch, delta=copied.delta)
    assert torch.equal(got, want) and not torch.equal(got, plain)


def test_capacity_is_enforced(tmp_path):
    shared = SharedFactors(tmp_path, CAPS, create=True)
    big = TableFactors(torch.arange(65), torch.zeros(65, 1), torch.zeros(1, 8), 1.0)
    with pytest.raises(ValueError, match="exceed the shared capacity"):
        publish(shared, 1, {"user": big, "item": factors_of(1, CAPS["item"])})
    assert shared.version == 0


def test_base_tables_shared_for_inference_copy_on_write_for_the_trainer(tmp_path):
    config = DLRMConfig(("user", "item"), (1000, 50), 2, 8, (8,), (4, 1))
    torch.manual_seed(0)
    source = DLRM(config)
    write_base_tables(source, tmp_path)
    serving, trainer = DLRM(config), DLRM(config)
    map_base_tables(serving, tmp_path, shared=True)
    map_base_tables(trainer, tmp_path, shared=False)
    user = source.sparse_arch.table("user").weight
    assert torch.equal(serving.sparse_arch.table("user").weight, user)
    trainer.sparse_arch.table("user").weight.data[5] += 1.0  # a fold in the trainer
    assert torch.equal(serving.sparse_arch.table("user").weight[5], user[5])
    serving.sparse_arch.table("user").weight.data[900] = 7.0  # inference patches another page
    assert bool((trainer.sparse_arch.table("user").weight[900] == 7.0).all())
