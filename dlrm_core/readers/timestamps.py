"""Event times of a click log's time column, as Unix seconds (float).

The time format is one of:
- ``None`` (auto): a number is epoch time whose unit follows from its size (below 1e11:
  seconds, i.e. up to the year 5138; below 1e14: milliseconds; below 1e17: microseconds; else
  nanoseconds); anything else must be an ISO 8601 date (``2017-11-07 09:30:38``,
  ``2017-11-07T09:30:38.5+02:00``, ``2017-11-07``);
- ``epoch-s``, ``epoch-ms``, ``epoch-us``, ``epoch-ns``: a number in that unit;
- a ``strptime`` pattern (it has a ``%``), e.g. ``%d/%m/%Y %H:%M:%S``.
A date without a zone is read as UTC. A value that does not parse raises ``LineError``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from dlrm_core.readers.base import LineError, parse_finite

EPOCH_UNITS = {"epoch-s": 1.0, "epoch-ms": 1e-3, "epoch-us": 1e-6, "epoch-ns": 1e-9}
# (smallest magnitude, seconds per unit), largest first: the auto format's reading of numbers
AUTO_EPOCH_SCALES = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3), (0.0, 1.0))

DATE_CACHE_SIZE = 1 << 16
NOT_A_DATE = "time is neither a number nor an ISO 8601 date"
NOT_A_NUMBER = "time is not a number"
NO_MATCH = "time does not match the time format"


def check_time_format(time_format: str | None) -> None:
    """Raises ValueError (naming the choices) unless ``time_format`` is usable."""
    if time_format is None or time_format in EPOCH_UNITS:
        return
    if "%" not in time_format or len(time_format) > 200:
        raise ValueError(
            f"time format {time_format[:40]!r} is not a strptime pattern (with %, e.g. "
            f"'%Y-%m-%d %H:%M:%S') nor one of {', '.join(EPOCH_UNITS)}"
        )
    try:
        datetime.strptime("", time_format)
    except ValueError as exc:
        if "does not match" not in str(exc):  # "bad directive", "stray %": the pattern is wrong
            raise ValueError(f"time format {time_format!r}: {exc}") from None


class TimeParser:
    """Callable: the text of one time field -> Unix seconds; raises LineError."""

    def __init__(self, time_format: str | None = None) -> None:
        check_time_format(time_format)
        self.time_format = time_format
        # Dates repeat in a log (every click of one second or hour): strptime once per text.
        self._dates: dict[str, float] = {}

    def __call__(self, text: str) -> float:
        fmt = self.time_format
        if fmt in EPOCH_UNITS:
            return parse_finite(text, NOT_A_NUMBER) * EPOCH_UNITS[fmt]
        t = self._dates.get(text)
        if t is None:
            t = self._auto(text) if fmt is None else self._pattern(text, fmt)
            if len(self._dates) >= DATE_CACHE_SIZE:
                self._dates.clear()
            self._dates[text] = t
        return t

    @staticmethod
    def _pattern(text: str, fmt: str) -> float:
        try:
            return _seconds(datetime.strptime(text, fmt))
        except ValueError:
            raise LineError(NO_MATCH, f"{text[:40]!r} vs {fmt!r}") from None

    @staticmethod
    def _auto(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            try:
                return _seconds(datetime.fromisoformat(text))
            except ValueError:
                raise LineError(NOT_A_DATE, repr(text[:40])) from None
        if not math.isfinite(value):
            raise LineError(NOT_A_NUMBER, repr(text[:40]))
        scale = next(s for least, s in AUTO_EPOCH_SCALES if abs(value) >= least)
        return value * scale


def _seconds(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
