"""Criteo display-ads TSV (Kaggle ``train.txt`` / Terabyte day files): one click per line.

Line: ``label \\t I1..I13 \\t C1..C26`` (40 tab-separated fields, no header; ``.gz`` accepted).

Schema:
- sparse ``C1``..``C26`` (one-hot): the 8-hex-digit hashed strings, hashed again into each
  table; an empty field is row 0 (missing). Default table sizes: 4x the feature's cardinality
  in the full Kaggle train set (at least 1,024 rows), capped at ``max_rows`` (default 2^18);
  override per feature with ``table_sizes``.
- dense ``I1``..``I13``: ``log(1 + max(x, 0))``; empty -> 0 (negative counts clip to 0).
- label: the first field, 0 or 1.
- time: the file has no timestamps; its rows are in time order, so data line i (0-based,
  malformed lines included) happens at ``i / qps`` seconds.
Malformed: not 40 fields, a label other than 0/1, a non-integer I field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrm_core.readers.base import (
    LineError,
    LineReader,
    ReadOptions,
    Row,
    check_rows,
    parse_label,
    resolve_table_sizes,
)
from dlrm_core.schema import SparseFeatureSpec, StreamSchema

DENSE = tuple(f"I{i}" for i in range(1, 14))
SPARSE = tuple(f"C{i}" for i in range(1, 27))
# Distinct values of C1..C26 in the full Kaggle train set (facebookresearch/dlrm).
KAGGLE_CARDINALITY = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
N_FIELDS = 1 + len(DENSE) + len(SPARSE)


class CriteoReader(LineReader):
    def __init__(
        self,
        path: str | Path,
        options: ReadOptions | None = None,
        qps: float = 1000.0,
        max_rows: int = 1 << 18,
        table_sizes: dict[str, int] | None = None,
    ) -> None:
        super().__init__(path, options)
        if not 0 < qps <= 1e9:
            raise ValueError(f"qps must be in (0, 1e9], got {qps}")
        check_rows("max_rows", max_rows)
        self.qps = float(qps)
        defaults = {
            name: min(max_rows, max(1024, 4 * card))
            for name, card in zip(SPARSE, KAGGLE_CARDINALITY, strict=True)
        }
        sizes = resolve_table_sizes(SPARSE, defaults, table_sizes)
        self._schema = StreamSchema(
            sparse=tuple(SparseFeatureSpec(n, sizes[n]) for n in SPARSE), dense=DENSE
        )

    @property
    def schema(self) -> StreamSchema:
        return self._schema

    def _parse(self, line: str, index: int) -> Row:
        fields = line.split("\t")
        if len(fields) != N_FIELDS:
            raise LineError(f"expected {N_FIELDS} tab-separated fields", f"got {len(fields)}")
        label = parse_label(fields[0])
        try:
            dense = [int(x) if x else 0 for x in fields[1:14]]
        except ValueError:
            raise LineError("I1..I13 must be integers or empty") from None
        return label, index / self.qps, dense, fields[14:]

    def _dense(self, raw: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(raw, 0.0))
