"""The node's telemetry spool: samples not yet accepted by the control plane, on disk first.

Layout (one directory per node): ``epoch`` (this spool's incarnation, chosen at random when the
spool is created: a node whose spool starts afresh, on a new disk or a restored host, numbers
from 0 again and the plane keys its samples by (node, epoch, seq)), ``spool.jsonl``
(append-only, one sample per line, fsynced), ``acked`` (every seq up to this one is done,
replaced atomically) and ``rejected.jsonl`` (samples set aside, each with the reason).

A disk that fails (ENOSPC, EIO, read-only) never loses a sample the process still holds: the
sample stays pending in memory and the spool file is rewritten whole once the disk works."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeworker.protocol import telemetry as protocol_telemetry

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _line(sample: dict[str, Any]) -> str:
    return json.dumps(sample, separators=(",", ":"), allow_nan=False) + "\n"


class Spool:
    """Samples not yet accepted by the control plane, on disk first. Thread-safe."""

    def __init__(self, directory: str | Path, max_pending: int = 7 * 86400):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "spool.jsonl"
        self.acked_path = self.dir / "acked"
        self.max_pending = max_pending
        self.lost_to_cap = 0
        self.disk_errors = 0
        self._lock = threading.Lock()
        self.acked = int(self.acked_path.read_text()) if self.acked_path.exists() else -1
        self.epoch = self._load_epoch()
        self._pending: list[dict[str, Any]] = []
        last = self.acked
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError:  # torn last line of a kill -9: it was never sent
                    continue
                last = max(last, sample["seq"])
                if sample["seq"] > self.acked:
                    self._pending.append(sample)
        self.next_seq = last + 1
        self._stale = 0  # done samples still in the file
        self._dirty = True  # rewrite the file before the next append (drops a torn tail)
        try:
            self._compact()
        except OSError as exc:
            self._disk_failed(exc)

    def _load_epoch(self) -> int:
        path = self.dir / "epoch"
        if path.exists():
            return int(path.read_text())
        # A spool from before epochs existed was posted as epoch 0: keep its numbering.
        epoch = (
            0
            if self.acked_path.exists()
            else secrets.randbelow(protocol_telemetry.MAX_WIRE_INT + 1)
        )
        try:
            _replace(path, str(epoch))
        except OSError as exc:  # a new epoch at the next start: its samples are still stored
            log.error("telemetry spool %s: cannot record the epoch: %s", self.dir, exc)
        return epoch

    def append(self, make: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        """Spool the sample ``make(seq)`` under the next sequence number (durable on return,
        unless the disk failed: then it is kept in memory and the error logged)."""
        with self._lock:
            sample = make(self.next_seq)
            line = _line(sample)
            self.next_seq += 1
            self._pending.append(sample)
            try:
                if self._dirty:
                    self._compact()
                else:
                    with self.path.open("a") as f:
                        f.write(line)
                        f.flush()
                        os.fsync(f.fileno())
            except OSError as exc:
                self._disk_failed(exc)
            if len(self._pending) > self.max_pending:  # days of outage: keep the newest
                drop = len(self._pending) - self.max_pending
                self.lost_to_cap += drop
                log.warning("telemetry spool full: dropping the %d oldest samples", drop)
                self._done([s["seq"] for s in self._pending[:drop]])
            return sample

    def pending(self, limit: int, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """The oldest pending samples: at most ``limit``, and at most ``max_bytes`` encoded
        (the first one always)."""
        with self._lock:
            out: list[dict[str, Any]] = []
            size = 0
            for sample in self._pending[:limit]:
                size += len(_line(sample))
                if out and max_bytes is not None and size > max_bytes:
                    break
                out.append(sample)
            return out

    def ack(self, seqs: list[int]) -> None:
        """The plane has these samples."""
        with self._lock:
            self._done(seqs)

    def reject(self, samples: list[dict[str, Any]], reason: Any) -> None:
        """Set samples aside with the reason the plane gave (kept for the operator)."""
        with self._lock:
            try:
                with (self.dir / "rejected.jsonl").open("a") as f:
                    f.write(json.dumps({"reason": reason, "samples": samples}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                self._disk_failed(exc)
            self._done([s["seq"] for s in samples])

    def _disk_failed(self, exc: OSError) -> None:
        self.disk_errors += 1
        self._dirty = True
        log.error("telemetry spool %s: %s (samples kept in memory)", self.dir, exc)

    def _done(self, seqs: list[int]) -> None:
        gone = set(seqs)
        self._pending = [s for s in self._pending if s["seq"] not in gone]
        self._stale += len(gone)
        # everything below the oldest pending sample is done
        watermark = self._pending[0]["seq"] - 1 if self._pending else self.next_seq - 1
        try:
            if watermark > self.acked:
                _replace(self.acked_path, str(watermark))
                self.acked = watermark
            if not self._pending or self._dirty or self._stale > 10_000:
                self._compact()
        except OSError as exc:  # the samples are done: resending them later is harmless
            self._disk_failed(exc)

    def _compact(self) -> None:
        _replace(self.path, "".join(_line(s) for s in self._pending))
        self._dirty, self._stale = False, 0
