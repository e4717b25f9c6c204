"""One table's low-rank correction as data: the immutable TableFactors snapshot a trainer
publishes and serving reads, and the factors file a LiveEmbedding's correction is exported to
and imported from (a checkpoint container of kind FACTORS_KIND with a version and sha256).

Shapes: N base rows, D dim, n active rows, r rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dlrm_core.checkpoint import CheckpointError, read_container, write_container

if TYPE_CHECKING:
    from dlrm_core.live_embedding import LiveEmbedding

FACTORS_KIND = "live-factors"
FACTORS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableFactors:
    """An immutable copy of one table's correction (what a trainer publishes)."""

    ids: torch.Tensor  # (n,) int64, sorted, unique
    a: torch.Tensor  # (n, r)
    b: torch.Tensor  # (r, D)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.b.shape[0])

    @property
    def num_active(self) -> int:
        return int(self.ids.shape[0])

    def validate(self, num_rows: int, dim: int, where: str) -> None:
        """Raise ValueError (naming ``where``) unless these are finite factors of a table of
        ``num_rows`` rows of ``dim``: sorted unique ids in range, A (n, r), B (r, D)."""
        n, ids = self.num_active, self.ids
        if ids.dtype != torch.int64 or ids.dim() != 1:
            raise ValueError(f"{where}: ids must be an int64 vector")
        if n and (int(ids[0]) < 0 or int(ids[-1]) >= num_rows or bool((ids.diff() <= 0).any())):
            raise ValueError(f"{where}: ids must be sorted, unique and in [0, {num_rows})")
        if self.b.dim() != 2 or self.b.shape[1] != dim or self.a.shape != (n, self.b.shape[0]):
            raise ValueError(
                f"{where}: need A (n={n}, r) and B (r, D={dim}), got {tuple(self.a.shape)} and "
                f"{tuple(self.b.shape)}"
            )
        if not (bool(torch.isfinite(self.a).all()) and bool(torch.isfinite(self.b).all())):
            raise ValueError(f"{where}: factors hold non-finite values")


def export_factors(live: LiveEmbedding, path: str | os.PathLike[str], table: str) -> str:
    """Write ``live``'s ids, A, B and last-use times with a version and sha256; returns the
    digest."""
    meta = {
        "table": table,
        "num_rows": live.num_rows,
        "dim": live.dim,
        "rank": live.rank,
        "scale": live.scale,
        "time_origin": live.time_origin,
    }
    # copies (rows sorted by id): the tensors may be views of a LiveGroup's buffers, which
    # torch.save writes whole
    ids, order = torch.sort(live.ids)
    tensors = {
        "ids": ids,
        "a": live.A.detach().index_select(0, order),
        "b": live.B.detach().clone(),
        "last_used": live.last_used.index_select(0, order),
    }
    return write_container(path, FACTORS_KIND, FACTORS_FORMAT_VERSION, meta, tensors)


def import_factors(live: LiveEmbedding, path: str | os.PathLike[str], table: str) -> None:
    """Load factors written by export_factors for the same table shape into ``live``, or
    refuse them with a CheckpointError."""
    meta, t = read_container(path, FACTORS_KIND, FACTORS_FORMAT_VERSION)
    want = {"table": table, "num_rows": live.num_rows, "dim": live.dim}
    for key, value in want.items():
        if meta.get(key) != value:
            raise CheckpointError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")
    try:
        factors = TableFactors(t["ids"], t["a"], t["b"], float(meta["scale"]))
        factors.validate(live.num_rows, live.dim, str(path))
        if t["last_used"].shape != factors.ids.shape:
            raise ValueError("last_used must be (n,)")
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid factors ({exc})") from exc
    live.load_factors(factors)
    live.last_used.copy_(t["last_used"].to(torch.float32))
    live.time_origin = meta.get("time_origin")
