"""The one sparse-batch contract used by readers, model, trainer, node runtime and experiments.

Shapes: B = batch size, F = number of sparse features, nnz_f = ids of feature f in the batch.
Feature f of sample b is the bag ``values[f][offsets[f][b] : offsets[f][b + 1]]`` (the last bag
ends at ``len(values[f])``), the EmbeddingBag ``offsets`` convention. Ids are already hashed
into their table's row range.
"""

from __future__ import annotations

import array
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ServedParts:
    """What serving a batch computed that training on it can reuse: kept with the batch until
    its labels arrive instead of being recomputed (LiveTrainer.score_and_keep attaches it).
    The pooled base embeddings are not kept: on Criteo's shape 26x the bytes (1,664 against
    64 per request) for 0.55 ms of a 14.4 ms step (measured against recomputing them,
    2026-12-07), and a fold between serving and training would make them stale."""

    bottom: torch.Tensor  # (B, D) float32: the bottom MLP's output of the batch's dense features
    # the bottom MLP's weights it came from; a trainer recomputes when its own differ
    token: object

    @property
    def nbytes(self) -> int:
        return self.bottom.numel() * self.bottom.element_size()


@dataclass(frozen=True)
class SparseBatch:
    keys: tuple[str, ...]  # F feature names, one embedding table each
    values: tuple[torch.Tensor, ...]  # F tensors (nnz_f,) int64 row ids
    offsets: tuple[torch.Tensor, ...]  # F tensors (B,) int64 bag starts
    dense: torch.Tensor  # (B, n_dense) float32
    labels: torch.Tensor  # (B,) float32 in {0, 1}
    timestamps: torch.Tensor  # (B,) float64 event time, seconds
    request_ids: torch.Tensor  # (B,) int64, unique per served request
    served: ServedParts | None = None  # what serving computed for it, if kept

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        self._check_served()
        if not (len(self.keys) == len(self.values) == len(self.offsets)):
            raise ValueError("keys, values and offsets must have one entry per feature")
        if self.dense.dim() != 2 or self.dense.shape[0] != n:
            raise ValueError(
                f"dense must be (B, n_dense) with B={n}, got {tuple(self.dense.shape)}"
            )
        if self.timestamps.shape != (n,) or self.request_ids.shape != (n,):
            raise ValueError("timestamps and request_ids must be (B,)")
        for key, vals, offs in zip(self.keys, self.values, self.offsets, strict=True):
            if offs.shape != (n,):
                raise ValueError(f"offsets of {key!r} must be (B,)={n}, got {tuple(offs.shape)}")
            if vals.dtype != torch.int64 or offs.dtype != torch.int64:
                raise ValueError(f"values and offsets of {key!r} must be int64")
            if not (vals.is_contiguous() and offs.is_contiguous()):  # the serving kernel's input
                raise ValueError(f"values and offsets of {key!r} must be contiguous")
        if n and self.keys:
            self._check_offsets(n)

    def _check_served(self) -> None:
        n = self.labels.shape[0]
        if self.served is not None:
            bottom = self.served.bottom
            if bottom.dim() != 2 or bottom.shape[0] != n or bottom.dtype != torch.float32:
                raise ValueError(f"served.bottom must be (B={n}, D) float32")

    def _check_offsets(self, n: int) -> None:
        """Every feature's offsets start at 0, never decrease and stay within its values: a
        handful of ops over all features at once (a node builds a batch per request)."""
        offsets = torch.stack(self.offsets)  # (F, B)
        nnz = _int64s([v.shape[0] for v in self.values])
        starts_at_zero = offsets[:, 0] == 0
        never_decrease = (offsets[:, 1:] >= offsets[:, :-1]).all(1)
        within = offsets[:, -1] <= nnz
        good = starts_at_zero & never_decrease & within
        if bool(good.all()):
            return
        f = int((~good).nonzero()[0])
        if not (starts_at_zero[f] and never_decrease[f]):
            raise ValueError(f"offsets of {self.keys[f]!r} must start at 0 and never decrease")
        raise ValueError(f"offsets of {self.keys[f]!r} point past its values")

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its tensors."""
        tensors = (
            *self.values,
            *self.offsets,
            self.dense,
            self.labels,
            self.timestamps,
            self.request_ids,
        )
        kept = self.served.nbytes if self.served is not None else 0
        return kept + sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return self.batch_size

    def feature(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, offsets) of one feature."""
        i = self.keys.index(key)
        return self.values[i], self.offsets[i]

    def lengths(self, i: int) -> torch.Tensor:
        """(B,) number of ids of feature i in each sample."""
        ends = torch.cat([self.offsets[i][1:], torch.tensor([self.values[i].shape[0]])])
        return ends - self.offsets[i]

    def with_labels(self, labels: torch.Tensor) -> SparseBatch:
        """This batch with other labels. Only they are checked: the rest was when this batch
        was built (the label join relabels every batch it emits; the checks of 26 features'
        offsets cost ~50 us)."""
        if labels.shape != self.labels.shape:
            raise ValueError(f"labels must be (B,)={tuple(self.labels.shape)}")
        out = copy.copy(self)
        object.__setattr__(out, "labels", labels.to(torch.float32))
        return out

    def with_served(self, served: ServedParts | None) -> SparseBatch:
        """This batch carrying ``served`` (checked alone, as with_labels checks the labels)."""
        out = copy.copy(self)
        object.__setattr__(out, "served", served)
        out._check_served()
        return out

    def select(self, index: torch.Tensor | Sequence[int]) -> SparseBatch:
        """The samples at ``index`` (in that order), as a new batch."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        values, offsets = [], []
        for i in range(len(self.keys)):
            lengths = self.lengths(i)[idx]
            new_offsets = _offsets_from_lengths(lengths)
            # value j of picked bag b sits at starts[b] + j: one gather for all bags
            shift = self.offsets[i][idx] - new_offsets
            total = int(lengths.sum())
            at = torch.arange(total) + torch.repeat_interleave(shift, lengths, output_size=total)
            values.append(self.values[i][at])
            offsets.append(new_offsets)
        return SparseBatch(
            self.keys,
            tuple(values),
            tuple(offsets),
            self.dense[idx],
            self.labels[idx],
            self.timestamps[idx],
            self.request_ids[idx],
            None
            if self.served is None
            else ServedParts(self.served.bottom[idx], self.served.token),
        )

    @staticmethod
    def concat(batches: Sequence[SparseBatch]) -> SparseBatch:
        """One batch holding the samples of ``batches`` in order (all with the same keys)."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        keys = batches[0].keys
        if any(b.keys != keys for b in batches):
            raise ValueError("concat needs batches with the same feature keys")
        values, offsets = [], []
        for i in range(len(keys)):
            values.append(torch.cat([b.values[i] for b in batches]))
            offsets.append(_offsets_from_lengths(torch.cat([b.lengths(i) for b in batches])))
        return SparseBatch(
            keys,
            tuple(values),
            tuple(offsets),
            torch.cat([b.dense for b in batches]),
            torch.cat([b.labels for b in batches]),
            torch.cat([b.timestamps for b in batches]),
            torch.cat([b.request_ids for b in batches]),
            _concat_served(batches),
        )

    @staticmethod
    def from_ids(
        keys: Sequence[str],
        ids: Sequence[Sequence[Sequence[int]]],
        dense: torch.Tensor,
        labels: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        request_ids: torch.Tensor | None = None,
    ) -> SparseBatch:
        """Build from ``ids[f][b]``: the row ids of feature f in sample b (one- or multi-hot)."""
        n = int(labels.shape[0])
        for per_sample in ids:
            if len(per_sample) != n:
                raise ValueError(f"every feature needs {n} bags, got {len(per_sample)}")
        # all features at once: one tensor of ids and one of lengths, split into per-feature views
        flat = _int64s([int(v) for per_sample in ids for bag in per_sample for v in bag])
        lengths = _int64s([len(bag) for per_sample in ids for bag in per_sample]).view(len(ids), n)
        values = flat.split(lengths.sum(1).tolist())
        offsets = (lengths.cumsum(1) - lengths).unbind(0)
        return SparseBatch(
            tuple(keys),
            tuple(values),
            tuple(offsets),
            dense.to(torch.float32),
            labels.to(torch.float32),
            torch.zeros(n, dtype=torch.float64)
            if timestamps is None
            else timestamps.to(torch.float64),
            torch.arange(n, dtype=torch.int64)
            if request_ids is None
            else request_ids.to(torch.int64),
        )


def _concat_served(batches: Sequence[SparseBatch]) -> ServedParts | None:
    """The batches' served parts as one, if all kept theirs from the same weights."""
    parts = [b.served for b in batches]
    first = parts[0]
    if first is None or any(p is None or p.token is not first.token for p in parts):
        return None
    return ServedParts(torch.cat([p.bottom for p in parts if p is not None]), first.token)


def _offsets_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros_like(lengths)
    if lengths.numel() > 1:
        offsets[1:] = torch.cumsum(lengths[:-1], dim=0)
    return offsets


def _int64s(ints: list[int]) -> torch.Tensor:
    """(len(ints),) int64 from Python ints, ~4x cheaper than torch.tensor(list) (which parses
    the list element by element): this runs on every served batch."""
    if not ints:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(array.array("q", ints), dtype=torch.int64)
