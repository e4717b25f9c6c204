"""The data-stream flags of the commands that read a stream (``experiment``,
``analyze-gradients``): one definition, one validation, one way to open the stream, and one
explanation when a file yields nothing usable.

Every flag is bounded (argparse's one-line error, exit 2). ``open_stream`` turns the flags into
a reader through ``readers.open_reader``; ``count_usable`` reads the file once and, when fewer
than the needed events are left, raises ``StreamError`` with ONE line naming the commonest
reason, its first line and the flag that fixes it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from dlrm_core.readers import (
    READER_FORMATS,
    CsvLayout,
    ReadOptions,
    ReadStats,
    StreamReader,
    open_reader,
)
from dlrm_core.readers import generic_csv as g
from dlrm_core.readers import timestamps as ts
from dlrm_core.readers.base import MAX_BATCH_SIZE, ORDER_REASON

MAX_EVENTS = 10**10
MAX_TABLE_ROWS = 2**31
MAX_NAME_CHARS = 200
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}

# A malformed-line reason of the csv reader -> what to change on the command line.
HINTS = {
    ts.NOT_A_DATE: "give --time-format (a strptime pattern such as '%d/%m/%Y %H:%M:%S', "
    "or epoch-s / epoch-ms)",
    ts.NO_MATCH: "fix --time-format (or leave it out: epoch numbers and ISO 8601 dates are "
    "read without it)",
    ts.NOT_A_NUMBER: "fix --time-format or --time",
    g.BAD_LABEL: "give --label-threshold T (label = value >= T) or another --label",
    g.LABEL_NOT_NUMBER: "give another --label (this column is not numeric)",
    g.DENSE_NOT_NUMBER: "move that column from --dense to --categorical",
    g.FIELD_COUNT: "--delimiter, if {delimiter!r} is not the file's delimiter",
    g.UNTERMINATED_QUOTE: "set --delimiter or fix the file's quoting",
    g.UNREADABLE: "set --delimiter or fix the file's quoting",
    ORDER_REASON: "add --sort-by-time",
    "empty line": "check --data (the file has only empty lines)",
}


CSV_FLAGS = (
    "label", "categorical", "dense", "time", "time_format", "sort_by_time", "label_threshold",
    "multi_hot", "dense_log1p", "delimiter", "columns",
)  # fmt: skip


NO_HEADER_HINT = "; the first line looks like data: name the columns with --columns"


class StreamError(ValueError):
    """A stream that cannot be used as given; the message is one line for the user."""


def bounded(kind: type, lo: float, hi: float):  # type: ignore[no-untyped-def]
    """An argparse type: ``kind`` (int or float) in [lo, hi], finite."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind.__name__}: {text[:40]!r}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            bounds = f"[{kind(lo)}, {kind(hi)}]" if kind is int else f"[{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text[:40]}")
        return value

    return parse


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one column name")
    if len(names) > 10_000 or any(len(n) > MAX_NAME_CHARS for n in names):
        raise argparse.ArgumentTypeError(f"at most 10000 names of {MAX_NAME_CHARS} characters")
    return names


def _name(text: str) -> str:
    names = _names(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"one column name, got {text[:40]!r}")
    return names[0]


def _multi_hot(text: str) -> tuple[str, str]:
    column, sep, separator = text.partition(":")
    if not sep or not column.strip() or not separator:
        raise argparse.ArgumentTypeError(f"COLUMN:SEPARATOR, e.g. tags:'|', got {text[:40]!r}")
    return column.strip(), DELIMITER_NAMES.get(separator, separator)


def _delimiter(text: str) -> str:
    value = DELIMITER_NAMES.get(text.lower(), text)
    if len(value) != 1 or value in '"\r\n':
        names = ", ".join(DELIMITER_NAMES)
        raise argparse.ArgumentTypeError(f"one character or {names}, got {text[:20]!r}")
    return value


def _time_format(text: str) -> str:
    try:
        ts.check_time_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_stream_arguments(
    parser: argparse.ArgumentParser, formats: tuple[str, ...], batch_size: int
) -> None:
    """The data flags, for a command reading ``formats`` (READER_FORMATS and maybe others)."""
    d = parser.add_argument_group("data")
    d.add_argument("--data", type=Path, help="the stream: a file (a folder for movielens)")
    d.add_argument("--format", required=True, choices=formats)
    d.add_argument("--max-events", type=bounded(int, 1, MAX_EVENTS), help="read the first N")
    d.add_argument("--batch-size", type=bounded(int, 1, MAX_BATCH_SIZE), default=batch_size)
    d.add_argument("--max-rows", type=bounded(int, 2, MAX_TABLE_ROWS), help="hashed table cap")
    c = parser.add_argument_group(
        "csv click logs", "any delimited log with a header (or --columns), one event a line"
    )
    c.add_argument("--label", type=_name, help="the label column (0/1, true/false, yes/no)")
    c.add_argument("--categorical", type=_names, help="categorical columns, comma-separated")
    c.add_argument("--dense", type=_names, default=(), help="numeric columns, comma-separated")
    c.add_argument("--time", type=_name, help="the time column (default: line i at i/1000 s)")
    c.add_argument(
        "--time-format",
        type=_time_format,
        help="a strptime pattern, or epoch-s|epoch-ms|epoch-us|epoch-ns (default: epoch "
        "numbers, unit by size, and ISO 8601 dates)",
    )
    c.add_argument("--sort-by-time", action="store_true", help="the file is not in time order")
    c.add_argument(
        "--label-threshold",
        type=bounded(float, -1e15, 1e15),
        help="a numeric label column: label = value >= T (e.g. 4 for ratings)",
    )
    c.add_argument(
        "--multi-hot",
        type=_multi_hot,
        action="append",
        default=[],
        metavar="COLUMN:SEP",
        help="a column holding a bag of values split on SEP (repeatable)",
    )
    c.add_argument("--dense-log1p", action="store_true", help="dense inputs as log(1+max(x,0))")
    c.add_argument(
        "--delimiter", type=_delimiter, help="one character or comma|semicolon|tab|pipe "
        "(default: sniffed from the first line)"
    )  # fmt: skip
    c.add_argument("--columns", type=_names, help="the file has no header: its column names")


def csv_layout(args: argparse.Namespace) -> CsvLayout:
    """The csv flags as a layout; StreamError names a missing or contradictory flag."""
    if not args.label or not args.categorical:
        raise StreamError("format csv needs --label COLUMN and --categorical COL1,COL2,...")
    if args.time_format and not args.time:
        raise StreamError("--time-format needs --time COLUMN")
    multi = dict(args.multi_hot)
    categorical = args.categorical + tuple(c for c in multi if c not in args.categorical)
    return CsvLayout(
        label=args.label, categorical=categorical, dense=tuple(args.dense), time=args.time,
        time_format=args.time_format, label_threshold=args.label_threshold,
        multi_hot=tuple(multi.items()), dense_log1p=args.dense_log1p, delimiter=args.delimiter,
        columns=args.columns, sort_by_time=args.sort_by_time,
    )  # fmt: skip


def open_stream(args: argparse.Namespace) -> StreamReader:
    """The reader the data flags describe (a file format of READER_FORMATS)."""
    if args.format not in READER_FORMATS:
        raise StreamError(f"format {args.format} is not a file format")
    reject_csv_flags(args)
    if args.data is None:
        raise StreamError(f"--data is required for format {args.format}")
    layout = csv_layout(args) if args.format == "csv" else None
    options = ReadOptions(batch_size=args.batch_size, max_events=args.max_events)
    try:
        return open_reader(args.format, args.data, options, args.max_rows, layout)
    except (ValueError, OSError) as exc:
        raise StreamError(one_line(exc)) from None


def reject_csv_flags(args: argparse.Namespace) -> None:
    """StreamError when a csv-only flag is given with another --format (it would be ignored)."""
    if args.format != "csv":
        given = [f"--{k.replace('_', '-')}" for k in CSV_FLAGS if _given(getattr(args, k))]
        if given:
            raise StreamError(f"{', '.join(given)}: only for --format csv")


def _given(value: object) -> bool:
    return value is not None and value is not False and value != () and value != []


def count_usable(reader: StreamReader, needed: int = 2) -> int:
    """Reads the stream once: its event count, at least ``needed``; a summary of malformed
    lines goes to stderr; StreamError (one line) when too few events are left."""
    try:
        events = sum(len(b) for b in reader)
    except (ValueError, OSError, EOFError) as exc:  # a bad header, a broken gzip ...
        no_header = isinstance(exc, g.MissingColumnsError) and exc.looks_like_data
        hint = NO_HEADER_HINT if no_header else ""
        raise StreamError(one_line(exc) + hint) from None
    st = reader.stats
    if events < needed:
        raise StreamError(explain_unusable(reader.path, st, events, needed, _delimiter_of(reader)))
    if st.malformed:
        reason = max(st.by_reason.items(), key=lambda kv: kv[1])[0]
        hint = _hint(reason, _delimiter_of(reader))
        print(f"{reader.path}: {st.summary()}\n  hint: {hint}", file=sys.stderr)
    return events


def explain_unusable(
    path: Path, st: ReadStats, events: int, needed: int, delimiter: str | None = None
) -> str:
    """One line: why ``path`` gave ``events`` < ``needed`` events, and what to change."""
    if st.lines == 0:
        return f"{path}: no data lines (the stream needs at least {needed} events)"
    head = f"{path}: {events} usable events of {st.lines} lines (needs at least {needed})"
    if not st.malformed:
        return f"{head}; raise --max-events"
    reason, count = max(st.by_reason.items(), key=lambda kv: kv[1])
    example = st.first_example(reason)
    where = "" if example is None else f", first on line {example.line_no}"
    detail = f" {example.detail}" if example is not None and example.detail else ""
    return f"{head}: {count} malformed as '{reason}'{where}{detail}; {_hint(reason, delimiter)}"


def _hint(reason: str, delimiter: str | None) -> str:
    return HINTS.get(reason, "check --format and --data").format(delimiter=delimiter or ",")


def _delimiter_of(reader: StreamReader) -> str | None:
    return getattr(reader, "field_delimiter", None)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
