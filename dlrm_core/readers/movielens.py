"""MovieLens ratings as a click stream: label = rating >= 4, replayed in timestamp order.

Two layouts, chosen by what the directory holds (``path`` may also name the ratings file):
- ml-100k: ``u.data`` (``user \\t item \\t rating \\t unix_ts``) with ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release date|video date|url|``
  19 genre flags), ``u.genre`` and ``u.occupation`` (Latin-1 text).
- newer releases (ml-latest, ml-20m, ml-25m, ...): ``ratings.csv``
  (``userId,movieId,rating,timestamp``) with ``movies.csv`` (``movieId,title,genres``, genres
  ``|``-separated; the year is the last ``(YYYY)`` in the title). These have no user side data.

Schema (sparse features; "hashed" tables use the stable hash, row 0 = missing):
- ``user_id``, ``item_id``: hashed, ``max_rows`` rows each (default 2^16).
- ml-100k only: ``user_age`` (7 buckets: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+),
  ``user_gender`` (M, F), ``user_occupation`` (the ``u.occupation`` list): vocabulary index + 1,
  so no collisions; ``user_zip3``: first 3 characters of the zip code, hashed into 4,096 rows.
- ``item_genres``: multi-hot bag of genre indices + 1 (``u.genre`` order, or the fixed
  MovieLens genre list for movies.csv; an unknown genre is row 0, no genre at all is ``[0]``).
- ``item_year``: the last ``(YYYY)`` in the title (ml-100k: else the release
  date's year) - 1869 for years 1870..2039, else 0.
Dense features: ml-100k ``user_age_norm`` = age / 100 and ``item_year_norm`` =
(year - 1900) / 100; ratings.csv ``item_year_norm`` only. Unknown values are 0.
Ratings of users or items missing from the side files keep their ids; their side features are 0.

The ratings file is not in time order, so it is read whole (ids, rating and time as compact
arrays, about 24 bytes a rating) and stably sorted by timestamp; ``max_events`` keeps the
earliest events. Malformed lines in any file are reported as ``<file>: <reason>``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dlrm_core.batch import SparseBatch
from dlrm_core.readers.base import (
    FeatureIds,
    ReadOptions,
    StreamReader,
    check_rows,
    make_batch,
    open_text,
    resolve_table_sizes,
)
from dlrm_core.readers.hashing import hash_ids
from dlrm_core.schema import SparseFeatureSpec, StreamSchema

AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # lower bounds of buckets 2..7; bucket 1 is < 18
GENDERS = ("M", "F")
YEAR_MIN, YEAR_MAX = 1870, 2039
LATEST_GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western", "(no genres listed)",
)  # fmt: skip
ZIP3_ROWS = 4096
_TITLE_YEAR = re.compile(r"\((\d{4})\)")


class MovieLensReader(StreamReader):
    def __init__(
        self,
        path: str | Path,
        options: ReadOptions | None = None,
        positive_min_rating: float = 4.0,
        max_rows: int = 1 << 16,
        table_sizes: dict[str, int] | None = None,
    ) -> None:
        root = Path(path)
        root = root.parent if root.is_file() else root
        if (root / "u.data").is_file():
            self.layout, ratings = "ml-100k", root / "u.data"
        elif (root / "ratings.csv").is_file():
            self.layout, ratings = "ratings.csv", root / "ratings.csv"
        else:
            raise FileNotFoundError(f"{root} holds neither u.data (ml-100k) nor ratings.csv")
        super().__init__(ratings, options)
        self.root = root
        if not 0 < positive_min_rating <= 10:
            raise ValueError(f"positive_min_rating must be in (0, 10], got {positive_min_rating}")
        check_rows("max_rows", max_rows)
        self.positive_min_rating = float(positive_min_rating)
        if self.layout == "ml-100k":
            self.genres = tuple(self._vocab("u.genre", split="|"))
            self.occupations = tuple(self._vocab("u.occupation"))
        else:
            self.genres, self.occupations = LATEST_GENRES, ()
        hashed = {"user_id": max_rows, "item_id": max_rows}
        if self.layout == "ml-100k":
            hashed["user_zip3"] = ZIP3_ROWS
        sizes = resolve_table_sizes(list(hashed), hashed, table_sizes)
        specs = [SparseFeatureSpec("user_id", sizes["user_id"])]
        specs.append(SparseFeatureSpec("item_id", sizes["item_id"]))
        if self.layout == "ml-100k":
            specs += [
                SparseFeatureSpec("user_age", len(AGE_BUCKETS) + 2),
                SparseFeatureSpec("user_gender", len(GENDERS) + 1),
                SparseFeatureSpec("user_occupation", len(self.occupations) + 1),
                SparseFeatureSpec("user_zip3", sizes["user_zip3"]),
            ]
        specs += [
            SparseFeatureSpec("item_genres", len(self.genres) + 1),
            SparseFeatureSpec("item_year", YEAR_MAX - YEAR_MIN + 2),
        ]
        dense = ("user_age_norm", "item_year_norm") if self.layout == "ml-100k" else ()
        self._schema = StreamSchema(tuple(specs), dense or ("item_year_norm",))

    @property
    def schema(self) -> StreamSchema:
        return self._schema

    def _vocab(self, name: str, split: str | None = None) -> list[str]:
        path = self.root / name
        with open_text(path, "latin-1") as fh:
            words = [line.strip() for line in fh if line.strip()]
        return [w.split(split)[0] if split else w for w in words]

    # -- side tables: id -> (sparse ids..., dense values...) -------------------------------

    def _users(self) -> dict[int, tuple[list[int], list[float]]]:
        path = self.root / "u.user"
        occupation = {o: i + 1 for i, o in enumerate(self.occupations)}
        rows: list[tuple[int, list[int], float]] = []
        zips: list[str] = []
        for line_no, line in self._lines(path, "latin-1"):
            f = line.split("|")
            try:
                if len(f) != 5:
                    raise ValueError(f"expected 5 |-separated fields, got {len(f)}")
                uid, age = int(f[0]), int(f[1])
                if not 0 <= age <= 130:
                    raise ValueError(f"age must be in [0, 130], got {age}")
            except ValueError as exc:
                self._bad(line_no, f"u.user: {exc}", line, path)
                continue
            bucket = 1 + int(np.searchsorted(AGE_BUCKETS, age, side="right"))
            gender = GENDERS.index(f[2]) + 1 if f[2] in GENDERS else 0
            rows.append((uid, [bucket, gender, occupation.get(f[3], 0)], age / 100.0))
            zips.append(f[4].strip()[:3])
        zip_ids = hash_ids(zips, self._table_rows("user_zip3")).tolist()
        # A repeated user id: the later line wins.
        return {uid: ([*ids, z], [age]) for (uid, ids, age), z in zip(rows, zip_ids, strict=True)}

    def _items(self) -> dict[int, tuple[tuple[int, ...], int, float]]:
        """item id -> (genre ids, year id, year_norm)."""
        items: dict[int, tuple[tuple[int, ...], int, float]] = {}
        if self.layout == "ml-100k":
            path, n_genres = self.root / "u.item", len(self.genres)
            for line_no, line in self._lines(path, "latin-1"):
                f = line.split("|")
                try:
                    if len(f) != 5 + n_genres or any(g not in ("0", "1") for g in f[5:]):
                        raise ValueError(f"expected 5 fields and {n_genres} 0/1 genre flags")
                    iid = int(f[0])
                except ValueError as exc:
                    self._bad(line_no, f"u.item: {exc}", line, path)
                    continue
                genres = tuple(i + 1 for i, g in enumerate(f[5:]) if g == "1")
                items[iid] = (genres, *_year(_title_year(f[1]) or f[2][-4:]))
            return items
        path = self.root / "movies.csv"
        genre_id = {g: i + 1 for i, g in enumerate(self.genres)}
        for line_no, line in self._lines(path, "utf-8", header=True):
            try:
                f = next(csv.reader([line]))
                if len(f) != 3:
                    raise ValueError(f"expected 3 fields (movieId,title,genres), got {len(f)}")
                iid = int(f[0])
            except (ValueError, csv.Error) as exc:
                self._bad(line_no, f"movies.csv: {exc}", line, path)
                continue
            genres = tuple(genre_id.get(g, 0) for g in f[2].split("|") if g)
            items[iid] = (genres, *_year(_title_year(f[1])))
        return items

    def _lines(self, path: Path, encoding: str, header: bool = False) -> Iterator[tuple[int, str]]:
        """(1-based line number, text) of the data lines of a file."""
        if not path.is_file():
            return  # a missing side file leaves those side features at 0
        with open_text(path, encoding) as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not (header and line_no == 1):
                    yield line_no, raw.rstrip("\r\n")

    def _table_rows(self, name: str) -> int:
        return self._schema.sparse[self._schema.keys.index(name)].num_rows

    # -- ratings ---------------------------------------------------------------------------

    def _ratings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user, item, rating, timestamp) arrays of the well-formed rating lines, file order."""
        sep, header = ("\t", False) if self.layout == "ml-100k" else (",", True)
        users, items, times = [], [], []
        ratings: list[float] = []
        for line_no, line in self._lines(self.path, "utf-8", header):
            self.stats.lines += 1
            f = line.split(sep)
            try:
                if len(f) != 4:
                    raise ValueError(f"expected 4 fields, got {len(f)}")
                u, i, r, t = int(f[0]), int(f[1]), float(f[2]), int(f[3])
                if not 0.5 <= r <= 5.0:
                    raise ValueError(f"rating must be in [0.5, 5], got {f[2][:20]!r}")
                if t < 0:
                    raise ValueError(f"timestamp must be >= 0, got {t}")
            except ValueError as exc:
                self._bad(line_no, f"{self.path.name}: {exc}", line)
                continue
            users.append(u)
            items.append(i)
            ratings.append(r)
            times.append(t)
        return (
            np.array(users, dtype=np.int64),
            np.array(items, dtype=np.int64),
            np.array(ratings, dtype=np.float32),
            np.array(times, dtype=np.float64),
        )

    def _batches(self) -> Iterator[SparseBatch]:
        users = self._users() if self.layout == "ml-100k" else {}
        items = self._items()
        user_ids, item_ids, ratings, times = self._ratings()
        order = np.argsort(times, kind="stable")
        if self.options.max_events is not None:
            order = order[: self.options.max_events]
        no_user = ([0, 0, 0, 0], [0.0])
        no_item: tuple[tuple[int, ...], int, float] = ((), 0, 0.0)
        for lo in range(0, order.shape[0], self.options.batch_size):
            idx = order[lo : lo + self.options.batch_size]
            u, i = user_ids[idx], item_ids[idx]
            ids: list[FeatureIds] = [
                hash_ids(u.astype(np.str_), self._table_rows("user_id")),
                hash_ids(i.astype(np.str_), self._table_rows("item_id")),
            ]
            item_side = [items.get(k, no_item) for k in i.tolist()]
            dense_cols = []
            if self.layout == "ml-100k":
                user_side = [users.get(k, no_user) for k in u.tolist()]
                side_ids = np.array([s[0] for s in user_side], dtype=np.int64).reshape(-1, 4)
                ids += [side_ids[:, j] for j in range(4)]
                dense_cols.append(np.array([s[1][0] for s in user_side]))
            bags = [g or (0,) for g, _, _ in item_side]
            lengths = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
            ids.append((np.fromiter((g for b in bags for g in b), dtype=np.int64), lengths))
            ids.append(np.array([y for _, y, _ in item_side], dtype=np.int64))
            dense_cols.append(np.array([y for _, _, y in item_side]))
            labels = (ratings[idx] >= self.positive_min_rating).astype(np.float32)
            dense = np.stack(dense_cols, axis=1)
            yield make_batch(self._schema, ids, dense, labels, times[idx], self.stats.events)
            self.stats.events += idx.shape[0]


def _title_year(title: str) -> str:
    years = _TITLE_YEAR.findall(title)  # the last one: "Land Before Time III (1995) (V)"
    return years[-1] if years else ""


def _year(text: str) -> tuple[int, float]:
    """(item_year id, item_year_norm) of a 4-digit year string; (0, 0.0) when unknown."""
    if len(text) == 4 and text.isdigit() and YEAR_MIN <= int(text) <= YEAR_MAX:
        year = int(text)
        return year - YEAR_MIN + 1, (year - 1900) / 100.0
    return 0, 0.0
