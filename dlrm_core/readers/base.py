"""What every stream reader shares: options, malformed-line accounting, line loop and batching.

A reader is an iterable of time-ordered ``SparseBatch`` es with a ``schema`` (its features and
table sizes). Iterating again re-reads the source from the start and resets ``stats``.

Malformed lines never stop a stream: each is counted by reason in ``reader.stats`` (with the
first few kept as examples, line number and text) and skipped. With ``strict=True`` the first one
raises ``MalformedLineError`` naming the file and line instead. A bad header or a missing file is
not a line-level problem: it raises ``ValueError`` / ``FileNotFoundError`` before any batch.

Every table reserves row 0 for a missing value (see ``hashing``); an empty multi-hot bag is
the bag ``[0]``. ``request_ids`` are the events' positions in the stream (0, 1, 2, ...).
"""

from __future__ import annotations

import gzip
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers.hashing import hash_ids
from dlrm_core.schema import StreamSchema

MAX_BATCH_SIZE = 1 << 20
EXAMPLE_CHARS = 200
ORDER_REASON = "timestamp earlier than the previous event"
MAX_KINDS_KEPT = 20  # the first line of each reason is kept too, for this many reasons

# One parsed event: (label in {0,1}, timestamp s, raw dense values, one entry per sparse
# feature: a string for a one-hot feature or a tuple of strings for a multi-hot one).
Row = tuple[float, float, Sequence[float], Sequence[str | tuple[str, ...]]]
# Ids of one feature over a batch: (B,) one id per sample, or (values, lengths) for bags.
FeatureIds = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ReadOptions:
    batch_size: int = 512
    max_events: int | None = None  # stop after this many events (the earliest ones)
    strict: bool = False  # raise on the first malformed line instead of skipping it
    max_examples: int = 5  # malformed lines kept verbatim (and the first of each reason)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")
        if self.max_events is not None and self.max_events < 0:
            raise ValueError(f"max_events must be >= 0 or None, got {self.max_events}")
        if not 0 <= self.max_examples <= 1000:
            raise ValueError(f"max_examples must be in [0, 1000], got {self.max_examples}")


@dataclass(frozen=True)
class BadLine:
    line_no: int  # 1-based physical line in the file (the header is line 1 when present)
    reason: str  # the kind of problem (the key of ReadStats.by_reason)
    text: str  # the line, cut to EXAMPLE_CHARS characters
    detail: str = ""  # what exactly was wrong on this line, e.g. the offending value


class LineError(ValueError):
    """A malformed line: ``reason`` is its kind (counted in ReadStats.by_reason), ``detail``
    what this line had (kept only in the examples), so that a million bad labels are one reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class ReadStats:
    lines: int = 0  # data lines looked at (header not counted)
    events: int = 0  # events yielded in batches
    malformed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[BadLine] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.events} events from {self.lines} lines, {self.malformed} malformed"]
        parts += [f"  {n} x {reason}" for reason, n in sorted(self.by_reason.items())]
        parts += [
            f"  e.g. line {b.line_no}: {b.reason}{f' ({b.detail})' if b.detail else ''}: {b.text!r}"
            for b in self.examples
        ]
        return "\n".join(parts)

    def first_example(self, reason: str) -> BadLine | None:
        return next((b for b in self.examples if b.reason == reason), None)


class MalformedLineError(ValueError):
    def __init__(self, path: Path, line_no: int, reason: str) -> None:
        super().__init__(f"{path}:{line_no}: {reason}")
        self.path, self.line_no, self.reason = path, line_no, reason


def check_file(path: Path) -> None:
    """Raises FileNotFoundError / IsADirectoryError / PermissionError unless ``path`` is a
    readable file."""
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a data file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read {path}: permission denied")


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Opens a text file (gzip when it ends in .gz); undecodable bytes become U+FFFD."""
    check_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


def make_batch(
    schema: StreamSchema,
    ids: Sequence[FeatureIds],
    dense: np.ndarray,
    labels: np.ndarray,
    timestamps: np.ndarray,
    first_request_id: int,
) -> SparseBatch:
    """A SparseBatch from per-feature id arrays (already in table range) and (B, n_dense) dense."""
    n = labels.shape[0]
    values, offsets = [], []
    for f in ids:
        if isinstance(f, tuple):
            vals, lengths = f
            offs = np.zeros(n, dtype=np.int64)
            np.cumsum(lengths[:-1], out=offs[1:])
        else:
            vals, offs = f, np.arange(n, dtype=np.int64)
        values.append(torch.from_numpy(np.ascontiguousarray(vals, dtype=np.int64)))
        offsets.append(torch.from_numpy(offs))
    return SparseBatch(
        keys=schema.keys,
        values=tuple(values),
        offsets=tuple(offsets),
        dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32).reshape(n, -1)),
        labels=torch.from_numpy(labels.astype(np.float32)),
        timestamps=torch.from_numpy(timestamps.astype(np.float64)),
        request_ids=torch.arange(first_request_id, first_request_id + n, dtype=torch.int64),
    )


def hash_column(
    bags: Sequence[str | tuple[str, ...]], num_rows: int, multi_hot: bool
) -> FeatureIds:
    """Hashes one feature over a batch: one-hot strings -> (B,); bags -> (values, lengths)."""
    if not multi_hot:
        return hash_ids(bags, num_rows)  # type: ignore[arg-type]  # all str when one-hot
    tuples = [b if isinstance(b, tuple) else (b,) for b in bags]
    tuples = [t if t else ("",) for t in tuples]  # an empty bag is the missing row
    lengths = np.fromiter((len(t) for t in tuples), dtype=np.int64, count=len(tuples))
    return hash_ids([v for t in tuples for v in t], num_rows), lengths


class StreamReader(ABC):
    """Iterable of time-ordered SparseBatches from one source, with its schema and stats."""

    def __init__(self, path: str | Path, options: ReadOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or ReadOptions()
        self.stats = ReadStats()

    @property
    @abstractmethod
    def schema(self) -> StreamSchema: ...

    def __iter__(self) -> Iterator[SparseBatch]:
        self.stats = ReadStats()
        return self._batches()

    @abstractmethod
    def _batches(self) -> Iterator[SparseBatch]: ...

    def _bad(
        self, line_no: int, reason: str, text: str, path: Path | None = None, detail: str = ""
    ) -> None:
        """Records a malformed line of ``path`` (default: the stream file); raises if strict."""
        if self.options.strict:
            full = f"{reason}: {detail}" if detail else reason
            raise MalformedLineError(path or self.path, line_no, full)
        st = self.stats
        st.malformed += 1
        st.by_reason[reason] = st.by_reason.get(reason, 0) + 1
        first_of_its_kind = st.by_reason[reason] == 1 and len(st.examples) < MAX_KINDS_KEPT
        keep = len(st.examples) < self.options.max_examples or first_of_its_kind
        if self.options.max_examples and keep:
            st.examples.append(BadLine(line_no, reason, text[:EXAMPLE_CHARS], detail))


class LineReader(StreamReader):
    """A reader over a line-per-event text file; subclasses parse one line into a Row.

    With ``sort_by_time`` the whole file is parsed into memory and stably sorted by timestamp
    (for files that are not in time order); otherwise a line whose timestamp is earlier than
    the previous event's is malformed, so the stream stays time-ordered.
    """

    has_header: bool = False
    multi_hot: frozenset[str] = frozenset()  # features whose Row entries are tuples (bags)
    encoding: str = "utf-8"
    sort_by_time: bool = False

    def __init__(self, path: str | Path, options: ReadOptions | None = None) -> None:
        super().__init__(path, options)
        check_file(self.path)  # a missing file is the caller's mistake, named now

    @abstractmethod
    def _parse(self, line: str, index: int) -> Row:
        """The event on a data line (index: 0-based data line); raises ValueError if malformed."""

    def _check_header(self, line: str) -> None:
        """Validates the header line (only called when has_header); raises ValueError."""

    def _dense(self, raw: np.ndarray) -> np.ndarray:
        """(B, n_dense) raw dense values -> model inputs."""
        return raw

    def _records(self, fh: IO[str]) -> Iterator[tuple[int, str]]:
        """(1-based line number, text without the newline) of each record: one line each."""
        for line_no, raw in enumerate(fh, start=1):
            yield line_no, raw.rstrip("\r\n")

    def _rows(self) -> Generator[Row, None, None]:
        last_t = -np.inf
        with open_text(self.path, self.encoding) as fh:
            records = self._records(fh)
            if self.has_header:
                header = next(records, None)
                if header is None:
                    raise ValueError(f"{self.path}: empty file, expected a header line")
                self._check_header(header[1])
            for index, (line_no, line) in enumerate(records):
                self.stats.lines += 1
                try:
                    if not line.strip():
                        raise LineError("empty line")
                    row = self._parse(line, index)
                except ValueError as exc:
                    kind = exc if isinstance(exc, LineError) else LineError(str(exc))
                    self._bad(line_no, kind.reason, line, detail=kind.detail)
                    continue
                if not self.sort_by_time:
                    if row[1] < last_t:
                        detail = f"{row[1]:.0f} < {last_t:.0f}"
                        self._bad(line_no, ORDER_REASON, line, detail=detail)
                        continue
                    last_t = row[1]
                yield row

    def _batches(self) -> Iterator[SparseBatch]:
        rows = self._rows()
        try:
            source = iter(sorted(rows, key=lambda r: r[1])) if self.sort_by_time else rows
            limit = self.options.max_events
            if limit == 0:
                return
            buf: list[Row] = []
            for row in source:  # sorted() is stable: equal timestamps keep file order
                buf.append(row)
                total = self.stats.events + len(buf)
                if len(buf) == self.options.batch_size or total == limit:
                    yield self._flush(buf)
                    buf = []
                    if total == limit:
                        return
            if buf:
                yield self._flush(buf)
        finally:
            rows.close()  # closes the file when the consumer stops early

    def _flush(self, rows: list[Row]) -> SparseBatch:
        schema = self.schema
        labels = np.fromiter((r[0] for r in rows), dtype=np.float32, count=len(rows))
        times = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        dense = np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), schema.n_dense)
        columns = zip(*(r[3] for r in rows), strict=True)
        ids = [
            hash_column(col, spec.num_rows, spec.name in self.multi_hot)
            for col, spec in zip(columns, schema.sparse, strict=True)
        ]
        batch = make_batch(schema, ids, self._dense(dense), labels, times, self.stats.events)
        self.stats.events += len(rows)
        return batch


def parse_finite(text: str, reason: str) -> float:
    """A finite float, or a LineError with ``reason`` and the text's start."""
    try:
        value = float(text)
    except ValueError:
        raise LineError(reason, repr(text[:40])) from None
    if not math.isfinite(value):
        raise LineError(reason, repr(text[:40]))
    return value


def check_rows(name: str, rows: int) -> int:
    """A table's row count, or a ValueError naming ``name``."""
    if not 2 <= int(rows) <= 2**40:
        raise ValueError(f"{name} must be in [2, 2**40], got {rows}")
    return int(rows)


def parse_label(text: str) -> float:
    if text == "0":
        return 0.0
    if text == "1":
        return 1.0
    raise LineError("label must be 0 or 1", repr(text[:20]))


def resolve_table_sizes(
    names: Sequence[str], defaults: dict[str, int], overrides: dict[str, int] | None
) -> dict[str, int]:
    """Per-feature table sizes: the format's defaults with the caller's overrides (checked)."""
    sizes = dict(defaults)
    for name, n in (overrides or {}).items():
        if name not in sizes:
            raise ValueError(f"table_sizes: unknown feature {name!r}; features are {list(names)}")
        sizes[name] = check_rows(f"table_sizes[{name!r}]", n)
    return sizes
