"""Any delimited click log: the caller names the label, time, categorical and dense columns.

Columns: named by the header line (names are stripped; a name matches exactly, else
case-insensitively), or, for a file without a header, by ``columns`` in file order.
The delimiter is ``delimiter``, or (None) whichever of , ; tab | splits the first line into
the most fields. Fields follow the ``csv`` module's quoting (a quoted field may hold the
delimiter, doubled quotes and newlines, up to MAX_RECORD_LINES lines); surrounding spaces are
stripped. A UTF-8 byte-order mark is skipped.

Schema: one sparse feature per categorical column (named after the column, values hashed as
strings into ``num_rows`` rows, default 2^18, or ``table_sizes[column]``; empty -> row 0);
a column listed in ``multi_hot`` with a separator is a bag of the separated values. One dense
feature per dense column: the float value (empty, NA, NaN, null, none -> 0), or
``log(1 + max(x, 0))`` with ``dense_log1p``. Other columns are ignored.

Label: 0/1 (also 0.0/1.0, false/true, no/yes, f/t, n/y in any case), or, with
``label_threshold``, any number (label = value >= threshold, e.g. a rating). Time: the time
column read by ``timestamps.TimeParser`` (``time_format``: auto, epoch units or a strptime
pattern); without a time column, data line i happens at i / qps seconds. A file not in time
order needs ``sort_by_time=True`` (read whole into memory); otherwise an event earlier than its
predecessor is malformed. Malformed lines (counted by the reasons below): a wrong field count,
a bad label, time or dense value, an unterminated quote.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from dlrm_core.readers.base import (
    LineError,
    LineReader,
    ReadOptions,
    Row,
    parse_finite,
    resolve_table_sizes,
)
from dlrm_core.readers.timestamps import TimeParser
from dlrm_core.schema import SparseFeatureSpec, StreamSchema

DELIMITERS = (",", ";", "\t", "|")
MAX_RECORD_LINES = 100  # a quoted field spanning more lines is an unterminated quote
LABEL_VALUES = {
    **dict.fromkeys(("1", "1.0", "true", "t", "yes", "y"), 1.0),
    **dict.fromkeys(("0", "0.0", "false", "f", "no", "n"), 0.0),
}
MISSING_DENSE = frozenset(("", "na", "nan", "null", "none"))

FIELD_COUNT = "wrong number of fields"
BAD_LABEL = "label is not 0/1 (nor true/false, yes/no)"
LABEL_NOT_NUMBER = "label is not a number"
DENSE_NOT_NUMBER = "dense value is not a number"
UNTERMINATED_QUOTE = "unterminated quote"
UNREADABLE = "unreadable CSV line"


class MissingColumnsError(ValueError):
    """The header (or ``columns``) lacks a named column; ``looks_like_data``: the header line
    has a number among its names, so the file probably has no header."""

    def __init__(self, message: str, looks_like_data: bool) -> None:
        super().__init__(message)
        self.looks_like_data = looks_like_data


def _check_options(
    delimiter: str | None,
    time: str | None,
    time_format: str | None,
    qps: float,
    label_threshold: float | None,
    num_rows: int,
) -> None:
    """CsvReader's scalar options, each in bounds, or a ValueError naming it."""
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise ValueError(f"delimiter must be one character (not a quote), got {delimiter!r}")
    if time_format is not None and time is None:
        raise ValueError("time_format needs a time column")
    if not 0 < qps <= 1e9:
        raise ValueError(f"qps must be in (0, 1e9], got {qps}")
    if label_threshold is not None and not math.isfinite(label_threshold):
        raise ValueError("label_threshold must be finite")
    if not 2 <= num_rows <= 2**40:
        raise ValueError(f"num_rows must be in [2, 2**40], got {num_rows}")


class CsvReader(LineReader):
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
        delimiter: str | None = None,
        columns: Sequence[str] | None = None,
        num_rows: int = 1 << 18,
        table_sizes: dict[str, int] | None = None,
        sort_by_time: bool = False,
        encoding: str = "utf-8-sig",
    ) -> None:
        super().__init__(path, options)
        self.label, self.time = label, time
        self.categorical, self.dense_cols = tuple(categorical), tuple(dense)
        if not self.categorical:
            raise ValueError("categorical: name at least one categorical column")
        named = self._wanted()
        if len(set(named)) != len(named):
            raise ValueError(f"a column may play one role only, got {named}")
        self.multi_hot_sep = dict(multi_hot or {})
        unknown = set(self.multi_hot_sep) - set(self.categorical)
        if unknown:
            raise ValueError(f"multi_hot: {sorted(unknown)} are not categorical columns")
        if any(not sep for sep in self.multi_hot_sep.values()):
            raise ValueError("multi_hot: separators must be non-empty")
        self.multi_hot = frozenset(self.multi_hot_sep)
        _check_options(delimiter, time, time_format, qps, label_threshold, num_rows)
        self.parse_time = TimeParser(time_format)
        self.delimiter, self.time_format, self.qps = delimiter, time_format, float(qps)
        self.label_threshold, self.dense_log1p = label_threshold, dense_log1p
        self.sort_by_time, self.encoding = sort_by_time, encoding
        self.columns = None if columns is None else tuple(c.strip() for c in columns)
        self.has_header = self.columns is None
        defaults = dict.fromkeys(self.categorical, num_rows)
        sizes = resolve_table_sizes(self.categorical, defaults, table_sizes)
        self._schema = StreamSchema(
            sparse=tuple(SparseFeatureSpec(c, sizes[c]) for c in self.categorical),
            dense=self.dense_cols,
        )
        self.field_delimiter = delimiter or ","
        self._n_fields = 0
        self._label_i, self._time_i = 0, -1
        self._cat_i: list[tuple[int, str | None]] = []
        self._dense_i: list[int] = []
        if self.columns is not None:
            self._index_columns(list(self.columns), "columns")

    @property
    def schema(self) -> StreamSchema:
        return self._schema

    def _wanted(self) -> list[str]:
        time = [self.time] if self.time else []
        return [self.label, *self.categorical, *self.dense_cols, *time]

    def _records(self, fh: IO[str]) -> Iterator[tuple[int, str]]:
        """Lines, a record spanning several when a quoted field holds newlines; the first line
        (header or data) sets the delimiter when none was given."""
        lines = super()._records(fh)
        for line_no, text in lines:
            if self.delimiter is None and line_no == 1:
                self.field_delimiter = sniff_delimiter(text)
            parts = [text]
            while '"' in text and _open_quote(text, self.field_delimiter):
                nxt = next(lines, None)
                if nxt is None or len(parts) == MAX_RECORD_LINES:
                    break  # _split reports it
                parts.append(nxt[1])
                text = "\n".join(parts)
            yield line_no, text

    def _split(self, text: str) -> list[str]:
        try:
            fields = next(
                csv.reader(
                    [text], delimiter=self.field_delimiter, skipinitialspace=True, strict=True
                )
            )
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise LineError(UNTERMINATED_QUOTE) from None
            raise LineError(UNREADABLE, str(exc)) from None
        except StopIteration:
            raise LineError(UNREADABLE, "no fields") from None
        return fields

    def _check_header(self, line: str) -> None:
        try:
            names = self._split(line)
        except LineError as exc:
            raise ValueError(f"{self.path}: unreadable header line: {exc}") from None
        self._index_columns([n.strip() for n in names], "header")

    def _index_columns(self, names: list[str], source: str) -> None:
        exact = {n: i for i, n in reversed(list(enumerate(names)))}
        folded: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            folded.setdefault(n.casefold(), []).append(i)

        def index(col: str) -> int | None:
            if col in exact:
                return exact[col]
            hits = folded.get(col.casefold(), [])
            return hits[0] if len(hits) == 1 else None

        found = {c: index(c) for c in self._wanted()}
        missing = [c for c, i in found.items() if i is None]
        if missing:
            shown = names[:40] + (["..."] if len(names) > 40 else [])
            raise MissingColumnsError(
                f"{self.path}: the {source} lacks the columns {missing}; it has {shown} "
                f"(delimiter {self.field_delimiter!r})",
                looks_like_data=source == "header" and any(map(_is_number, names)),
            )
        at = {c: i for c, i in found.items() if i is not None}
        self._n_fields = len(names)
        self._label_i = at[self.label]
        self._time_i = -1 if self.time is None else at[self.time]
        self._cat_i = [(at[c], self.multi_hot_sep.get(c)) for c in self.categorical]
        self._dense_i = [at[c] for c in self.dense_cols]

    def _parse(self, line: str, index: int) -> Row:
        f = self._split(line)
        if len(f) != self._n_fields:
            raise LineError(FIELD_COUNT, f"expected {self._n_fields}, got {len(f)}")
        return (
            self._label(f[self._label_i].strip()),
            index / self.qps if self._time_i < 0 else self.parse_time(f[self._time_i].strip()),
            [_dense(f[i].strip()) for i in self._dense_i],
            [
                f[i].strip()
                if sep is None
                else tuple(v.strip() for v in f[i].split(sep) if v.strip())
                for i, sep in self._cat_i
            ],
        )

    def _label(self, text: str) -> float:
        if self.label_threshold is None:
            value = LABEL_VALUES.get(text.lower())
            if value is None:
                raise LineError(BAD_LABEL, repr(text[:20]))
            return value
        return 1.0 if parse_finite(text, LABEL_NOT_NUMBER) >= self.label_threshold else 0.0

    def _dense(self, raw: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(raw, 0.0)) if self.dense_log1p else raw


def sniff_delimiter(line: str) -> str:
    """Which of DELIMITERS splits ``line`` into the most fields (',' when none splits it)."""
    best, most = ",", 1
    for d in DELIMITERS:
        try:
            n = len(next(csv.reader([line], delimiter=d)))
        except (csv.Error, StopIteration):
            continue
        if n > most:
            best, most = d, n
    return best


def _open_quote(text: str, delimiter: str) -> bool:
    """Whether ``text`` ends inside a quoted field (the record goes on on the next line)."""
    try:
        next(csv.reader([text], delimiter=delimiter, skipinitialspace=True, strict=True))
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    except StopIteration:
        pass
    return False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dense(text: str) -> float:
    if text.lower() in MISSING_DENSE:
        return 0.0
    return parse_finite(text, DENSE_NOT_NUMBER)
