"""nodeworker/replayer.py: what a replay leaves behind when it stops."""

import threading
import time

import torch

from dlrm_core.batch import SparseBatch
from nodeworker.replayer import ReplayConfig, Replayer


def stream(rows: int) -> list[SparseBatch]:
    ids = torch.arange(rows, dtype=torch.int64)
    batch = SparseBatch(
        ("a",),
        (ids,),
        (ids.clone(),),
        torch.zeros(rows, 2),
        torch.ones(rows),
        torch.zeros(rows, dtype=torch.float64),
        ids.clone(),
    )
    return [batch]


def test_stopping_drops_the_arrivals_a_slow_node_left_waiting():
    """They lived in the node's process and read as its memory after the replay."""
    release = threading.Event()

    def predict(request: SparseBatch, arrived_at: float):  # type: ignore[no-untyped-def]
        release.wait(5)
        return torch.zeros(len(request)), request.request_ids, 0

    config = ReplayConfig(qps=5_000, label_delay_s=0.0, workers=1)
    replayer = Replayer(predict, lambda rid, label: None, stream(20_000), config).start()
    time.sleep(0.5)
    release.set()
    replayer.stop()
    stats = replayer.stats
    assert stats.unserved > 0 and replayer._work.empty()
    assert stats.served + stats.unserved + stats.errors <= stats.sent
