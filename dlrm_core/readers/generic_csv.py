"""Any delimited click log with a header: the caller names the label, time, categorical and
dense columns.

Schema: one sparse feature per categorical column (named after the column, values hashed as
strings into ``num_rows`` rows, default 2^18, or ``table_sizes[column]``; empty -> row 0);
a column listed in ``multi_hot`` with a separator is a bag of the separated values. One dense
feature per dense column: the float value (empty -> 0), or ``log(1 + max(x, 0))`` with
``dense_log1p``. Other columns are ignored.

Label: the label column must be 0 or 1, or, with ``label_threshold``, any number (label =
value >= threshold, e.g. a rating). Time: the time column in Unix seconds, or parsed with
``time_format`` (``strptime``, read as UTC when it has no zone); without a time column, data
line i happens at i / qps seconds. A file not in time order needs ``sort_by_time=True`` (read
whole into memory); otherwise an event earlier than its predecessor is malformed.
Malformed: wrong field count, a bad label, time or dense value. Fields are split with the
``csv`` module one line at a time (quoted fields work, quoted newlines do not).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dlrm_core.readers.base import LineReader, ReadOptions, Row, resolve_table_sizes
from dlrm_core.schema import SparseFeatureSpec, StreamSchema


class CsvReader(LineReader):
    has_header = True

    def __init__(
        self,
        path: str | Path,
        *,
        label: str,
        categorical: Sequence[str],
        dense: Sequence[str] = (),
        time: str | None = None,
        options: ReadOptions | None = None,
        time_format: str | None = None,
        qps: float = 1000.0,
        label_threshold: float | None = None,
        multi_hot: Mapping[str, str] | None = None,
        dense_log1p: bool = False,
        delimiter: str = ",",
        num_rows: int = 1 << 18,
        table_sizes: dict[str, int] | None = None,
        sort_by_time: bool = False,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, options)
        self.label, self.time = label, time
        self.categorical, self.dense_cols = tuple(categorical), tuple(dense)
        named = [label, *self.categorical, *self.dense_cols, *([time] if time else [])]
        if not self.categorical:
            raise ValueError("categorical: name at least one categorical column")
        if len(set(named)) != len(named):
            raise ValueError(f"a column may play one role only, got {named}")
        self.multi_hot_sep = dict(multi_hot or {})
        unknown = set(self.multi_hot_sep) - set(self.categorical)
        if unknown:
            raise ValueError(f"multi_hot: {sorted(unknown)} are not categorical columns")
        if any(not sep for sep in self.multi_hot_sep.values()):
            raise ValueError("multi_hot: separators must be non-empty")
        self.multi_hot = frozenset(self.multi_hot_sep)
        if len(delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {delimiter!r}")
        if time_format is not None and time is None:
            raise ValueError("time_format needs a time column")
        if not 0 < qps <= 1e9:
            raise ValueError(f"qps must be in (0, 1e9], got {qps}")
        if label_threshold is not None and not math.isfinite(label_threshold):
            raise ValueError("label_threshold must be finite")
        if not 2 <= num_rows <= 2**40:
            raise ValueError(f"num_rows must be in [2, 2**40], got {num_rows}")
        self.delimiter, self.time_format, self.qps = delimiter, time_format, float(qps)
        self.label_threshold, self.dense_log1p = label_threshold, dense_log1p
        self.sort_by_time, self.encoding = sort_by_time, encoding
        defaults = dict.fromkeys(self.categorical, num_rows)
        sizes = resolve_table_sizes(self.categorical, defaults, table_sizes)
        self._schema = StreamSchema(
            sparse=tuple(SparseFeatureSpec(c, sizes[c]) for c in self.categorical),
            dense=self.dense_cols,
        )
        self._n_fields = 0
        self._label_i, self._time_i = 0, -1
        self._cat_i: list[tuple[int, str | None]] = []
        self._dense_i: list[int] = []

    @property
    def schema(self) -> StreamSchema:
        return self._schema

    def _split(self, line: str) -> list[str]:
        try:
            return next(csv.reader([line], delimiter=self.delimiter))
        except (csv.Error, StopIteration) as exc:
            raise ValueError(f"unreadable CSV line: {exc}") from None

    def _check_header(self, line: str) -> None:
        names = self._split(line)
        wanted = [
            self.label,
            *self.categorical,
            *self.dense_cols,
            *([self.time] if self.time else []),
        ]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{self.path}: header lacks the columns {missing}; it has {names}")
        self._n_fields = len(names)
        self._label_i = names.index(self.label)
        self._time_i = names.index(self.time) if self.time else -1
        self._cat_i = [(names.index(c), self.multi_hot_sep.get(c)) for c in self.categorical]
        self._dense_i = [names.index(c) for c in self.dense_cols]

    def _parse(self, line: str, index: int) -> Row:
        f = self._split(line)
        if len(f) != self._n_fields:
            raise ValueError(f"expected {self._n_fields} fields, got {len(f)}")
        return (
            self._label(f[self._label_i]),
            self._timestamp(f, index),
            self._dense_values(f),
            [
                f[i] if sep is None else tuple(v for v in f[i].split(sep) if v)
                for i, sep in self._cat_i
            ],
        )

    def _label(self, text: str) -> float:
        if self.label_threshold is None:
            if text.strip() in ("0", "1"):
                return float(text)
            raise ValueError(f"label must be 0 or 1, got {text[:20]!r}")
        value = _number(text, "label")
        return 1.0 if value >= self.label_threshold else 0.0

    def _timestamp(self, f: list[str], index: int) -> float:
        if self._time_i < 0:
            return index / self.qps
        text = f[self._time_i].strip()
        if self.time_format is None:
            return _number(text, "time")
        try:
            t = datetime.strptime(text, self.time_format)
        except ValueError:
            raise ValueError(f"time {text[:40]!r} does not match {self.time_format!r}") from None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()

    def _dense_values(self, f: list[str]) -> list[float]:
        return [_number(f[i], "dense value") if f[i].strip() else 0.0 for i in self._dense_i]

    def _dense(self, raw: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(raw, 0.0)) if self.dense_log1p else raw


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text[:20]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {text[:20]!r}")
    return value
