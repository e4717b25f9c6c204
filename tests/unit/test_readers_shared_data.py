"""Every reader on the real files in ../shared/data (copies go to tmp_path only)."""

import math
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import (
    AvazuReader,
    CriteoReader,
    CsvReader,
    MovieLensReader,
    ReadOptions,
    hash_ids,
)

pytestmark = pytest.mark.needs_data


def read_all(reader) -> SparseBatch:
    batches = list(reader)
    assert all(b.keys == reader.schema.keys for b in batches)
    assert all(b.dense.shape[1] == reader.schema.n_dense for b in batches)
    return SparseBatch.concat(batches)


def assert_ids_in_tables(batch, schema):
    for values, spec in zip(batch.values, schema.sparse, strict=True):
        assert int(values.min()) >= 0 and int(values.max()) < spec.num_rows, spec.name


def test_criteo_sample(shared_data):
    path = shared_data / "criteo_kaggle_head10k" / "train_head10k.txt"
    reader = CriteoReader(path, ReadOptions(batch_size=3000), qps=500.0)
    batches = list(reader)
    assert [len(b) for b in batches] == [3000, 3000, 3000, 1000]
    batch = SparseBatch.concat(batches)
    assert reader.stats.events == reader.stats.lines == 10_000 and reader.stats.malformed == 0
    assert int(batch.labels.sum()) == 2182  # README: 21.8% positives
    assert torch.equal(batch.timestamps, torch.arange(10_000, dtype=torch.float64) / 500.0)
    assert torch.equal(batch.request_ids, torch.arange(10_000))
    assert batch.keys == tuple(f"C{i}" for i in range(1, 27))
    assert_ids_in_tables(batch, reader.schema)
    rows = [line.rstrip("\n").split("\t") for line in path.open()]
    raw = np.array([[int(x) if x else 0 for x in r[1:14]] for r in rows], dtype=np.float64)
    assert np.allclose(batch.dense.numpy(), np.log1p(np.maximum(raw, 0)), atol=1e-6)
    for k in range(26):  # empty field <=> row 0, and the ids are the stable hash of the string
        column = [r[14 + k] for r in rows]
        assert (batch.values[k] == 0).sum() == sum(v == "" for v in column)
        expected = hash_ids(column, reader.schema.sparse[k].num_rows)
        assert np.array_equal(batch.values[k].numpy(), expected)


def test_criteo_limit(shared_data):
    reader = CriteoReader(
        shared_data / "criteo_kaggle_head10k" / "train_head10k.txt",
        ReadOptions(batch_size=256, max_events=1000),
    )
    batch = read_all(reader)
    assert len(batch) == 1000 and reader.stats.lines == 1000  # stops reading at the limit


def test_avazu_sample(shared_data):
    reader = AvazuReader(shared_data / "avazu_head9k" / "train_head9k.csv")
    batch = read_all(reader)
    assert len(batch) == 8999 and reader.stats.malformed == 0
    assert int(batch.labels.sum()) == 1563  # README: 17.4%
    hour = datetime(2014, 10, 21, 0, tzinfo=UTC).timestamp()
    assert bool((batch.timestamps == hour).all())
    assert len(batch.keys) == 22 and batch.dense.shape == (8999, 0)
    assert_ids_in_tables(batch, reader.schema)
    hod = batch.keys.index("hour_of_day")
    assert set(batch.values[hod].tolist()) == set(hash_ids(["00"], 1024).tolist())


def test_generic_csv_on_avazu_agrees_with_avazu_reader(shared_data):
    path = shared_data / "avazu_head9k" / "train_head9k.csv"
    cols = ["site_id", "app_id", "device_ip", "C14"]
    generic = CsvReader(path, label="click", time="hour", time_format="%y%m%d%H", categorical=cols)
    g = read_all(generic)
    a = read_all(AvazuReader(path))
    assert torch.equal(g.labels, a.labels) and torch.equal(g.timestamps, a.timestamps)
    for c in cols:  # same hash, same default table size
        assert torch.equal(g.feature(c)[0], a.feature(c)[0])


def test_movielens_100k(shared_data):
    root = shared_data / "movielens_100k"
    reader = MovieLensReader(root, ReadOptions(batch_size=4096))
    batch = read_all(reader)
    st = reader.stats
    assert len(batch) == st.events == st.lines == 100_000 and st.malformed == 0
    assert int(batch.labels.sum()) == 55_375  # README: rating >= 4
    t = batch.timestamps
    assert bool((t[1:] >= t[:-1]).all())
    assert t[0] == datetime(1997, 9, 20, 3, 5, 10, tzinfo=UTC).timestamp()
    assert t[-1] == datetime(1998, 4, 22, 23, 10, 38, tzinfo=UTC).timestamp()
    assert_ids_in_tables(batch, reader.schema)
    assert reader.schema.keys == (
        "user_id", "item_id", "user_age", "user_gender", "user_occupation", "user_zip3",
        "item_genres", "item_year",
    )  # fmt: skip
    assert reader.schema.dense == ("user_age_norm", "item_year_norm")
    # Toy Story (item 1): 1995, Animation|Children's|Comedy = u.genre indices 3, 4, 5.
    item_row = int(hash_ids(["1"], reader.schema.table_sizes[1])[0])
    toy = torch.nonzero(batch.feature("item_id")[0] == item_row).flatten()
    assert len(toy) == 452  # its rating count in u.data
    one = batch.select(toy[:1])
    assert one.feature("item_genres")[0].tolist() == [4, 5, 6]
    assert one.feature("item_year")[0].tolist() == [1995 - 1869]
    assert one.dense[0, 1].item() == pytest.approx(0.95)
    # User 1: 24, M, technician, zip 85711.
    user_row = int(hash_ids(["1"], reader.schema.table_sizes[0])[0])
    u1 = batch.select(torch.nonzero(batch.feature("user_id")[0] == user_row).flatten()[:1])
    assert u1.feature("user_age")[0].tolist() == [2]  # 18-24
    assert u1.feature("user_gender")[0].tolist() == [1]
    assert u1.feature("user_occupation")[0].tolist() == [reader.occupations.index("technician") + 1]
    assert u1.feature("user_zip3")[0].tolist() == hash_ids(["857"], 4096).tolist()
    assert u1.dense[0, 0].item() == pytest.approx(0.24)


def test_movielens_limit_keeps_the_earliest_events(shared_data):
    root = shared_data / "movielens_100k"
    reader = MovieLensReader(root, ReadOptions(batch_size=300, max_events=1000))
    batches = list(reader)
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    stamps = sorted(int(line.split("\t")[3]) for line in (root / "u.data").open())
    got = torch.cat([b.timestamps for b in batches]).tolist()
    assert got == [float(s) for s in stamps[:1000]]


def test_movielens_ratings_csv_layout_matches_ml100k(shared_data, tmp_path):
    """The newer ratings.csv + movies.csv layout, written from the same ml-100k ratings."""
    src = shared_data / "movielens_100k"
    with (tmp_path / "ratings.csv").open("w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for line in (src / "u.data").open():
            out.write(",".join(line.split()) + "\n")
    with (tmp_path / "movies.csv").open("w", encoding="utf-8") as out:
        out.write("movieId,title,genres\n")
        for line in (src / "u.item").open(encoding="latin-1"):
            f = line.rstrip("\n").split("|")
            title = f'"{f[1]}"' if "," in f[1] else f[1]
            out.write(f"{f[0]},{title},Comedy|Drama\n")
    new = MovieLensReader(tmp_path / "ratings.csv", ReadOptions(batch_size=5000))
    assert new.layout == "ratings.csv"
    assert new.schema.keys == ("user_id", "item_id", "item_genres", "item_year")
    assert new.schema.dense == ("item_year_norm",)
    b_new, b_old = read_all(new), read_all(MovieLensReader(src, ReadOptions(batch_size=5000)))
    assert new.stats.malformed == 0 and len(b_new) == 100_000
    for key in ("user_id", "item_id", "item_year"):
        assert torch.equal(b_new.feature(key)[0], b_old.feature(key)[0])
    assert torch.equal(b_new.labels, b_old.labels)
    assert torch.equal(b_new.timestamps, b_old.timestamps)
    comedy, drama = 1 + new.genres.index("Comedy"), 1 + new.genres.index("Drama")
    assert b_new.feature("item_genres")[0][:4].tolist() == [comedy, drama] * 2
    assert not math.isnan(float(b_new.dense.sum()))
