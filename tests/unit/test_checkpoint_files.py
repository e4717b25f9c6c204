"""Issue 17, failure 15: the file a rebase names is stat'ed and streamed (never read whole before
it is checked), taken only under the node's checkpoint directory, and every refusal that depends
on the file system is one generic answer (no oracle of which paths exist on the node)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dlrm_core.model import DLRM, DLRMConfig
from nodeworker.checkpoint_files import REFUSED, CheckpointFiles, checkpoint_bytes_bound
from nodeworker.control_socket import InvalidRequest
from nodeworker.runtime_config import RuntimeConfig
from tests import services

CFG = DLRMConfig(("a", "b"), (200, 90), 3, 8, (16, 8), (5, 1))


@pytest.fixture
def folders(tmp_path):
    """(the checkpoint directory with one model saved in it, a folder outside it)."""
    from dlrm_core.checkpoint import save_model

    inside, outside = tmp_path / "checkpoints", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    model = DLRM(CFG)
    digest = save_model(inside / "good.ckpt", model)
    (outside / "good.ckpt").write_bytes((inside / "good.ckpt").read_bytes())
    return inside, outside, digest, model


def refused(files: CheckpointFiles, checkpoint) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as info:
        files.checked(checkpoint)
    return info.value.fields


def test_a_file_under_the_directory_is_taken_with_either_checksum(folders):
    inside, _, digest, model = folders
    files = CheckpointFiles(inside, checkpoint_bytes_bound(model))
    whole = hashlib.sha256((inside / "good.ckpt").read_bytes()).hexdigest()
    path = str(inside / "good.ckpt")
    assert files.checked({"location": path, "checksum": f"sha256:{whole}"}) == (
        path,
        f"sha256:{whole}",
    )
    assert files.checked({"location": path, "checksum": digest}) == (path, f"sha256:{digest}")
    assert files.checked({"location": "good.ckpt"}) == (path, None)  # relative: to the directory
    (inside / "alias.ckpt").symlink_to(inside / "good.ckpt")  # a link that stays inside
    assert files.checked({"location": str(inside / "alias.ckpt")})[0] == path


def test_missing_mismatched_and_outside_files_get_one_generic_answer(folders):
    inside, outside, digest, model = folders
    files = CheckpointFiles(inside, checkpoint_bytes_bound(model))
    (inside / "escape.ckpt").symlink_to(outside / "good.ckpt")
    (inside / "sub").mkdir()
    answers = [
        refused(files, {"location": str(inside / "missing.ckpt"), "checksum": digest}),
        refused(files, {"location": str(inside / "good.ckpt"), "checksum": "0" * 64}),
        refused(files, {"location": str(outside / "good.ckpt"), "checksum": digest}),
        refused(files, {"location": "../elsewhere/good.ckpt", "checksum": digest}),
        refused(files, {"location": str(inside / "sub" / ".." / ".." / "elsewhere" / "good.ckpt")}),
        refused(files, {"location": str(inside / "escape.ckpt"), "checksum": digest}),
        refused(files, {"location": "/etc/passwd"}),
        refused(files, {"location": str(inside)}),
        refused(files, {"location": str(inside / "sub")}),
    ]
    assert all(answer == REFUSED for answer in answers)
    assert str(outside) not in json.dumps(REFUSED)


def test_a_fifo_is_refused_without_waiting_for_a_writer(folders):
    inside, _, _, model = folders
    os.mkfifo(inside / "pipe.ckpt")
    files = CheckpointFiles(inside, checkpoint_bytes_bound(model))
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.append(refused(files, {"location": "pipe.ckpt"})), daemon=True
    )
    worker.start()
    worker.join(10)
    assert outcome == [REFUSED]


def test_a_file_larger_than_this_model_can_be_is_refused_by_its_size(folders):
    inside, _, _, model = folders
    bound = checkpoint_bytes_bound(model)
    assert (inside / "good.ckpt").stat().st_size <= bound
    with open(inside / "huge.ckpt", "wb") as f:  # sparse: no disk used
        f.truncate(bound + 1)
    files = CheckpointFiles(inside, bound)
    assert refused(files, {"location": "huge.ckpt"}) == REFUSED
    assert refused(files, {"location": "huge.ckpt", "checksum": "ab" * 32}) == REFUSED


def test_malformed_requests_name_their_field():
    files = CheckpointFiles(Path("/nonexistent"), 1 << 20)
    assert set(refused(files, "x.ckpt")) == {"checkpoint"}
    for location in (None, 7, "", "a" * 1025, "bad\x00.ckpt"):
        assert set(refused(files, {"location": location})) == {"checkpoint.location"}
    for checksum in ("sha256:xyz", "sha256:" + "A" * 64, 12, "md5:" + "0" * 32):
        fields = refused(files, {"location": "x.ckpt", "checksum": checksum})
        assert set(fields) == {"checkpoint.checksum"}


def test_the_directory_defaults_to_the_start_up_checkpoints_folder(folders, tmp_path):
    inside, outside, _, model = folders
    config = RuntimeConfig(name="ckpt-dir", data_dir=tmp_path, checkpoint=str(inside / "good.ckpt"))
    assert CheckpointFiles.for_node(config, model).directory == inside
    files = CheckpointFiles.for_node(
        RuntimeConfig(
            name="ckpt-dir",
            data_dir=tmp_path,
            checkpoint=str(inside / "good.ckpt"),
            checkpoint_dir=outside,
        ),
        model,
    )
    assert files.directory == outside and files.max_bytes == checkpoint_bytes_bound(model)
    assert files.checked({"location": "good.ckpt"})[0] == str(outside / "good.ckpt")
    assert refused(files, {"location": str(inside / "good.ckpt")}) == REFUSED


# Hash a 512 MiB file against a wrong checksum in a fresh process; its peak RSS before and after.
STREAMED = """
import sys
from pathlib import Path
from nodeworker.checkpoint_files import CheckpointFiles
from nodeworker.control_socket import InvalidRequest

def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

before = peak_kib()
try:
    files = CheckpointFiles(Path(sys.argv[1]), 1 << 30)
    files.checked({"location": "big.ckpt", "checksum": "1" * 64})
except InvalidRequest:
    print(before, peak_kib())
"""


def test_the_checksum_is_streamed_not_read_whole(tmp_path):
    with open(tmp_path / "big.ckpt", "wb") as f:
        f.truncate(512 << 20)  # sparse: reads as zeros, costs no disk
    done = subprocess.run(
        [sys.executable, "-c", STREAMED, str(tmp_path)],
        cwd=services.ROOT,
        env={**os.environ, "PYTHONPATH": str(services.ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    before, after = map(int, done.stdout.split())
    assert after - before < 32 * 1024, (before, after)  # KiB: a chunk, not the 512 MiB file
