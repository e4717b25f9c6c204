"""The messages between the node (nodeworker.trainer_client) and its trainer process
(nodeworker.trainer_proc), as frozen dataclasses: they cross the process boundary pickled,
through a command queue (node -> trainer), an output queue (trainer -> node) and a pipe of
folded base rows (trainer -> node, see FoldedRows)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nodeworker import protocol
from nodeworker.feed import FeedReport
from nodeworker.protocol.events import NodeEvent

# --- node -> trainer: commands, each answered by one Reply with the same id (Stop is not) ---


@dataclass(frozen=True)
class SetPolicy:
    id: int
    policy: protocol.Policy


@dataclass(frozen=True)
class TakeSnapshot:
    id: int
    directory: str  # where the trainer writes its factor and patch files


@dataclass(frozen=True)
class PinCpus:
    id: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class AnnounceSnapshot:
    """The training cluster is about to take snapshot ``snapshot`` (at Unix time ``taken_at``)
    for a delta rebase: the trainer anchors its served rows now (nodeworker.trainer_rebase)."""

    id: int
    snapshot: int
    taken_at: float


@dataclass(frozen=True)
class RebaseRows:
    """A delta rebase (dlrm_core.rebase): these base rows are overwritten and their corrections
    dropped, not folded; the MLPs are loaded. table -> (ids (m,) int64, rows (m, D) float32).
    With the announced ``snapshot`` they were taken at, what the trainer learnt about them
    since (its anchor) is carried onto them instead."""

    id: int
    tables: dict[str, tuple[np.ndarray, np.ndarray]]
    dense: dict[str, np.ndarray]  # the MLPs' parameters by name
    snapshot: int | None = None


@dataclass(frozen=True)
class StopTrainer:
    """Send the last stats and exit; not answered."""


AnsweredCommand = SetPolicy | TakeSnapshot | PinCpus | AnnounceSnapshot | RebaseRows
TrainerCommand = AnsweredCommand | StopTrainer


# --- trainer -> node: the results of commands ---


@dataclass(frozen=True)
class PolicyApplied:
    ranks: dict[str, int]  # each trained table's rank under the new policy


@dataclass(frozen=True)
class SnapshotTaken:
    version: int  # the factor version the snapshot holds (published just before it)
    digests: dict[str, str]  # table -> the sha256 of its factor file


@dataclass(frozen=True)
class CpusPinned:
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class SnapshotAnnounced:
    snapshot: int
    rows: dict[str, int]  # table -> rows anchored (its most recently used corrected rows)
    nbytes: int  # what the anchor holds, in the memory account until its rebase or expiry


@dataclass(frozen=True)
class RowsRebased:
    version: int  # the first factor version without the dropped corrections
    dropped: dict[str, int]  # table -> corrections dropped
    # the rows written besides the cluster's: table -> (ids (m,), rows (m, D)), the cluster's
    # row plus the trainer's change since the anchor; inference writes the same
    carried: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    carry: str = "carried"  # or why nothing was carried (no announce, expired, another one)


CommandResult = PolicyApplied | SnapshotTaken | CpusPinned | SnapshotAnnounced | RowsRebased


@dataclass(frozen=True)
class Reply:
    id: int
    result: CommandResult | None = None
    error: str | None = None  # the command failed: "ExceptionType: message"


# --- trainer -> node: unprompted ---


@dataclass(frozen=True)
class TrainerReady:
    version: int  # the factor version the trainer starts from


# The trainer's events ("rank_change", "prune") are node events as they are.
TrainerEvent = NodeEvent


@dataclass(frozen=True)
class TrainerStats:
    steps: int
    samples: int  # trained on so far (replays included)
    skipped: int  # batches skipped for non-finite inputs, loss or gradients
    version: int  # the newest factor version published
    ranks: dict[str, int]
    memory: dict[str, tuple[int, int]]  # table -> (overhead bytes, base bytes)
    events: tuple[TrainerEvent, ...]
    # (version, the label times of the rows it is the first to have learnt from), for the lag
    fresh: tuple[tuple[int, list[float]], ...]
    feed: FeedReport  # the join's counts and the quality rows since the last stats
    feed_cpu_s: float  # cpu time the join took so far


TrainerOutput = Reply | TrainerReady | TrainerStats


@dataclass(frozen=True)
class FoldedRows:
    """What inference writes into its model before it serves the trainer's next version, sent
    down the patch pipe before it: the base rows the trainer folded since its last version,
    table -> (ids (m,) int64, rows (m, D) float32), and, while it tunes the top MLP
    (nodeworker.tuned_top), the tuned layers' parameters by name as of that version."""

    tables: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    top: dict[str, np.ndarray] = field(default_factory=dict)
