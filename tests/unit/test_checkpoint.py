import pytest
import torch

from dlrm_core.checkpoint import CheckpointError, load_model, save_model
from dlrm_core.model import DLRM, DLRMConfig

CFG = DLRMConfig(("a", "b"), (20, 9), 3, 4, (8, 4), (5, 1))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(3)
    model = DLRM(CFG)
    path = tmp_path / "model.ckpt"
    digest = save_model(path, model)
    return model, path, digest


def test_round_trip_restores_every_weight(saved):
    model, path, digest = saved
    assert len(digest) == 64
    loaded = load_model(path, expected=CFG)
    assert loaded.config == CFG
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


def test_corrupt_file_is_refused(saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(path)


def test_truncated_file_is_refused(saved):
    _, path, _ = saved
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|bad magic"):
            load_model(path)


def test_mismatched_config_is_refused(saved):
    _, path, _ = saved
    other = DLRMConfig(("a", "b"), (20, 10), 3, 4, (8, 4), (5, 1))
    with pytest.raises(CheckpointError, match=r"config mismatch: table_sizes"):
        load_model(path, expected=other)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a LiveUpdate tensor file"):
        load_model(path)
