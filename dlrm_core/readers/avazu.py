"""Avazu CTR CSV (Kaggle ``train.csv`` / ``train.gz``): one ad impression per line.

Header (columns found by name, any order): ``id, click, hour, C1, banner_pos, site_id,
site_domain, site_category, app_id, app_domain, app_category, device_id, device_ip,
device_model, device_type, device_conn_type, C14..C21``.

Schema:
- sparse (22, one-hot): the 21 raw categorical columns (``C1`` .. ``C21`` above, values hashed
  as strings; empty -> row 0) plus ``hour_of_day`` (``HH`` of the hour column, 0..23).
  Default table size ``max_rows`` (2^18) for the open-vocabulary columns and 1,024 rows for the
  columns with a handful of values; override per feature with ``table_sizes``.
- dense: none (Avazu has no numeric features; the model learns a constant dense input).
- label: ``click``, 0 or 1. ``id`` is not a feature.
- time: ``hour`` is ``YYMMDDHH`` (UTC); every event of an hour gets the hour's start as its
  Unix timestamp. The file is ordered by hour; an earlier hour after a later one is malformed.
Malformed: wrong field count, a label other than 0/1, an invalid hour.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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

CATEGORICAL = (
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip
SPARSE = (*CATEGORICAL, "hour_of_day")
# Columns with under ~100 distinct values in the full data: a small table is enough.
SMALL = frozenset(
    {"C1", "banner_pos", "site_category", "app_category", "device_type", "device_conn_type",
     "C15", "C16", "C18", "hour_of_day"}
)  # fmt: skip
SMALL_ROWS = 1024
REQUIRED = ("click", "hour", *CATEGORICAL)


class AvazuReader(LineReader):
    has_header = True

    def __init__(
        self,
        path: str | Path,
        options: ReadOptions | None = None,
        max_rows: int = 1 << 18,
        table_sizes: dict[str, int] | None = None,
    ) -> None:
        super().__init__(path, options)
        check_rows("max_rows", max_rows)
        defaults = {n: SMALL_ROWS if n in SMALL else max_rows for n in SPARSE}
        sizes = resolve_table_sizes(SPARSE, defaults, table_sizes)
        self._schema = StreamSchema(
            sparse=tuple(SparseFeatureSpec(n, sizes[n]) for n in SPARSE), dense=()
        )
        self._n_fields = 0
        self._label_col = self._hour_col = 0
        self._cat_cols: list[int] = []
        self._hours: dict[str, float] = {}

    @property
    def schema(self) -> StreamSchema:
        return self._schema

    def _check_header(self, line: str) -> None:
        names = line.split(",")
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise ValueError(f"{self.path}: header lacks the Avazu columns {missing}")
        self._n_fields = len(names)
        self._label_col, self._hour_col = names.index("click"), names.index("hour")
        self._cat_cols = [names.index(c) for c in CATEGORICAL]

    def _hour(self, text: str) -> float:
        t = self._hours.get(text)
        if t is None:
            if len(text) != 8 or not text.isdigit():
                raise LineError("hour must be YYMMDDHH", repr(text[:20]))
            y, m, d, h = (int(text[i : i + 2]) for i in range(0, 8, 2))
            try:
                t = datetime(2000 + y, m, d, h, tzinfo=UTC).timestamp()
            except ValueError:
                raise LineError("hour is not a valid date and hour", repr(text)) from None
            self._hours[text] = t
        return t

    def _parse(self, line: str, index: int) -> Row:
        fields = line.split(",")
        if len(fields) != self._n_fields:
            reason = f"expected {self._n_fields} comma-separated fields"
            raise LineError(reason, f"got {len(fields)}")
        hour = fields[self._hour_col]
        sparse = [fields[i] for i in self._cat_cols]
        sparse.append(hour[6:8])
        return parse_label(fields[self._label_col]), self._hour(hour), (), sparse
