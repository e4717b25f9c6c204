"""The checkpoint file a rebase names, checked before anything of it is loaded.

Only regular files under the node's checkpoint directory are taken (the location resolved, symlinks
and ``..`` included, before the check), no larger than a checkpoint of the running model's
configuration can be, and matching the checksum sent with them. The file is opened once, stat'ed
and hashed in chunks, so a huge or wrong file costs a read, never its size in memory. Every refusal
that depends on the file system (outside the directory, missing, unreadable, not a regular file,
too large, another checksum) is the one generic REFUSED answer: the rebase errors the control plane
shows its viewers say nothing about which paths exist on the node.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dlrm_core.model import DLRM, base_weight
from nodeworker.control_socket import InvalidRequest
from nodeworker.runtime_config import RuntimeConfig

CHUNK_BYTES = 1 << 20
MAX_LOCATION_CHARS = 1024  # the control plane's ModelCheckpoint.location
DIGEST_BYTES = 32  # save_model's sha256, the file's last bytes
# header, pickle framing and alignment of a checkpoint beyond its tensors' bytes
OVERHEAD_BYTES = 16 * 1024 * 1024

REFUSED = {
    "checkpoint": "No usable checkpoint at this location: it must be a regular file under the "
    "node's checkpoint directory, of this model's size, matching the checksum sent."
}


def checkpoint_bytes_bound(model: DLRM) -> int:
    """The most bytes a checkpoint of ``model``'s configuration can take: its tables' and dense
    layers' tensors, an eighth more, and a fixed allowance for the container."""
    weights = [base_weight(model, name) for name in model.config.feature_names]
    tables = sum(w.numel() * w.element_size() for w in weights)
    dense = sum(
        p.numel() * p.element_size()
        for arch in (model.dense_arch, model.over_arch)
        for p in arch.parameters()
    )
    return tables + dense + (tables + dense) // 8 + OVERHEAD_BYTES


@dataclass(frozen=True)
class CheckpointFiles:
    directory: Path  # only files under it are read
    max_bytes: int

    @classmethod
    def for_node(cls, config: RuntimeConfig, model: DLRM) -> CheckpointFiles:
        """The node's checkpoint directory (RuntimeConfig.checkpoint_dir, by default the one
        holding its start-up checkpoint) and the size bound of its model."""
        directory = config.checkpoint_dir or Path(config.checkpoint).parent
        return cls(Path(directory), checkpoint_bytes_bound(model))

    def checked(self, checkpoint: Any) -> tuple[str, str | None]:
        """(the resolved path of the file a rebase names, its checksum as ``sha256:<hex>`` or
        None when none came); InvalidRequest for a malformed request or REFUSED."""
        location, want = _wire_fields(checkpoint)
        path = self._resolved(location)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no FIFO waits
        try:
            fd = os.open(path, flags)
        except OSError:
            raise InvalidRequest(REFUSED) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not 0 < info.st_size <= self.max_bytes:
                raise InvalidRequest(REFUSED)
            with os.fdopen(fd, "rb", closefd=False) as file:
                if want and not self._matches(file, want):
                    raise InvalidRequest(REFUSED)
        finally:
            os.close(fd)
        return str(path), f"sha256:{want}" if want else None

    def _resolved(self, location: str) -> Path:
        root = Path(os.path.realpath(self.directory))
        path = Path(os.path.realpath(root / location))  # an absolute location replaces root
        if not path.is_relative_to(root) or path == root:
            raise InvalidRequest(REFUSED)
        return path

    def _matches(self, file: BinaryIO, want: str) -> bool:
        """Whether ``want`` is the sha256 of the whole file (the control plane's) or the digest
        save_model wrote at its end, read in chunks up to max_bytes."""
        whole = hashlib.sha256()
        tail = b""
        read = 0
        while chunk := file.read(CHUNK_BYTES):
            read += len(chunk)
            if read > self.max_bytes:  # it grew since the stat
                return False
            whole.update(chunk)
            tail = (tail + chunk)[-DIGEST_BYTES:]
        return any(hmac.compare_digest(want, digest) for digest in (whole.hexdigest(), tail.hex()))


def _wire_fields(checkpoint: Any) -> tuple[str, str]:
    """(location, checksum hex or "") of a rebase's checkpoint; its format only, no file yet."""
    if not isinstance(checkpoint, dict):
        raise InvalidRequest({"checkpoint": "An object with a location (and a checksum)."})
    location = checkpoint.get("location")
    if (
        not isinstance(location, str)
        or not 0 < len(location) <= MAX_LOCATION_CHARS
        or "\x00" in location
    ):
        raise InvalidRequest(
            {"checkpoint.location": f"A path of 1 to {MAX_LOCATION_CHARS} characters, no NUL."}
        )
    checksum = checkpoint.get("checksum") or ""
    want = checksum.removeprefix("sha256:") if isinstance(checksum, str) else None
    if want is None or (want and not _is_sha256_hex(want)):
        raise InvalidRequest({"checkpoint.checksum": "Must be sha256:<64 lowercase hex>."})
    return location, want


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
