"""The version installer: serves the newest complete factor version the trainer published in
shared memory, never a torn one, and the base rows the trainer folded before it.

The patch-ordering protocol: the trainer maps the base tables copy-on-write, so the rows it
folds (pruned rows merged into the base) stay private until this side writes them. Before
publishing version v it sends the rows folded since v-1 (FoldedRows) down a pipe, with the top
MLP layers it tunes as of v (nodeworker.tuned_top), and v's ``aux`` counts the FoldedRows
messages sent up to v. Installing v waits for that many, applies them to the base and the top
MLP and swaps v in, all between two batches, so the served top always goes with its version.
Inference serves v from its shared-memory slot in place; once v serves it tells the trainer's
side (SharedFactors.installed) that the other slot is free to be written.

The epoch: a rebase or a trainer restart rewrites the base, so every version and every folded
row of the trainer before it is stale. ``forget_versions`` bumps the epoch; a version read, or
rows sent, in an older epoch are never installed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import torch

from dlrm_core.malloc_policy import trim_native_heap
from dlrm_core.model import base_weight
from nodeworker.inference import InferencePath
from nodeworker.runtime_metrics import RuntimeMetrics
from nodeworker.shared_memory import SharedFactors
from nodeworker.trainer_messages import FoldedRows

log = logging.getLogger(__name__)

POLL_S = 0.01  # how often the installer looks for a newer factor version
FOLDED_WAIT_S = 2.0  # a version whose folded rows have not all arrived by then is not installed
TRIM_PERIOD_S = 1.0  # how often the inference process gives its free malloc pages back


class VersionInstaller:
    def __init__(
        self, inference: InferencePath, shared: SharedFactors, metrics: RuntimeMetrics
    ) -> None:
        self.inference = inference
        self.shared = shared
        self.metrics = metrics
        self.epoch = 0  # bumped when a rebase or restart makes built versions stale
        self.applied = 0  # FoldedRows messages of this epoch written into the base
        self._folded: deque[FoldedRows] = deque()  # received, not yet applied
        self._cond = threading.Condition()

    def receive(self, rows: FoldedRows, epoch: int) -> None:
        """FoldedRows from a trainer started in ``epoch`` (the trainer client's reader)."""
        with self._cond:
            if epoch == self.epoch:  # not a late message of a replaced trainer
                self._folded.append(rows)
                self._cond.notify_all()

    def run(self, stop: threading.Event) -> None:
        """Install versions as they come; every TRIM_PERIOD_S give the process's free malloc
        pages back (dlrm_core/malloc_policy.py: replaced versions, folded rows, the requests'
        and the feed's temporaries), with or without a trainer."""
        trimmed = time.monotonic()
        while not stop.wait(POLL_S):
            self.install_newest()
            if time.monotonic() - trimmed >= TRIM_PERIOD_S:
                trim_native_heap()
                trimmed = time.monotonic()

    def install_newest(self) -> None:
        """Serve the newest complete factor version. Its ServingDelta (built by the trainer)
        is read in place, without the inference lock; only the version's folded rows and the
        swap happen under it, between two batches."""
        epoch, installed = self.epoch, self.inference.version
        if self.shared.version <= installed:
            return
        started = time.perf_counter()
        snap = self.shared.read_serving(newer_than=installed)
        if snap is None:
            return
        with self._cond:
            if not self._cond.wait_for(
                lambda: epoch != self.epoch or self.applied + len(self._folded) >= snap.aux,
                timeout=FOLDED_WAIT_S,
            ):
                log.error("base patches for version %d did not arrive; not installed", snap.version)
                return
        read = time.perf_counter()
        with self.inference.exclusive:
            locked = time.perf_counter()
            if epoch != self.epoch or snap.version <= self.inference.version:
                return  # a rebase or trainer restart replaced what this version was built on
            self._apply_folded(snap.aux)
            self.inference.serve(snap.delta, snap.version)
            self.shared.installed(snap.version)  # the other slot is free for the next version
            released = time.perf_counter()
        self.metrics.installed(snap.version, time.time(), read - started, released - locked)

    def _apply_folded(self, upto: int) -> None:
        model = self.inference.model
        with self._cond, torch.no_grad():
            while self.applied < upto:
                patch = self._folded.popleft()
                for name, (ids, rows) in patch.tables.items():
                    base_weight(model, name)[torch.from_numpy(ids)] = torch.from_numpy(rows)
                if patch.top:  # the trainer's tuned top MLP layers (nodeworker.tuned_top)
                    params = dict(model.named_parameters())
                    for name, value in patch.top.items():
                        params[name].copy_(torch.from_numpy(value))
                self.applied += 1

    def forget_versions(self) -> int:
        """Serve the bare base until a new trainer publishes: the old trainer's versions, the
        one being installed and its late folded rows never serve again. Call it holding
        ``inference.exclusive``, after the base tables changed; returns the new epoch, the one
        to start the next trainer in."""
        self.inference.serve(None, self.shared.version)
        self.shared.installed(self.shared.version)  # it reads no slot now
        with self._cond:
            self.epoch += 1
            self._folded.clear()
            self.applied = 0
            self._cond.notify_all()
            return self.epoch
