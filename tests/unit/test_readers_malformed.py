"""Readers on small files written here: malformed lines are counted, reported and skipped;
strict mode raises with the line number; limits, gzip and re-iteration work."""

import gzip

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import (
    AvazuReader,
    CriteoReader,
    CsvReader,
    MalformedLineError,
    MovieLensReader,
    ReadOptions,
)


def criteo_line(label="0", ints=None, cats=None):
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *ints, *cats]) + "\n"


def write(path, lines, opener=open):
    with opener(path, "wt") as fh:
        fh.writelines(lines)
    return path


@pytest.fixture
def criteo_file(tmp_path):
    lines = [
        criteo_line("1"),
        criteo_line("0", cats=[""] * 26),  # all missing: fine
        "0\t1\t2\n",  # line 3: too few fields
        criteo_line("2"),  # line 4: bad label
        criteo_line("0", ints=["x"] + [""] * 12),  # line 5: bad integer
        "\n",  # line 6: empty
        criteo_line("1", ints=["-5"] + [""] * 12),  # negative count clips to 0
    ]
    return write(tmp_path / "criteo.txt", lines)


def test_criteo_malformed_lines_are_counted_reported_and_skipped(criteo_file):
    reader = CriteoReader(criteo_file, ReadOptions(batch_size=2), qps=10.0)
    batch = SparseBatch.concat(list(reader))
    st = reader.stats
    assert (st.lines, st.events, st.malformed) == (7, 3, 4)
    assert [b.line_no for b in st.examples] == [3, 4, 5, 6]
    assert st.by_reason == {
        "expected 40 tab-separated fields": 1,
        "label must be 0 or 1": 1,
        "I1..I13 must be integers or empty": 1,
        "empty line": 1,
    }
    assert st.examples[0].text == "0\t1\t2"
    assert [b.detail for b in st.examples[:2]] == ["got 3", "'2'"]
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    # Time is the line's position, so a skipped line leaves a gap.
    assert batch.timestamps.tolist() == [0.0, 0.1, 0.6]
    assert bool((torch.stack(batch.values)[:, 1] == 0).all())  # missing -> row 0
    assert batch.dense[2].tolist() == [0.0] * 13
    assert "4 malformed" in st.summary()


def test_criteo_strict_mode_raises_with_line_number(criteo_file):
    reader = CriteoReader(criteo_file, ReadOptions(strict=True))
    with pytest.raises(MalformedLineError, match=r"criteo.txt:3: expected 40") as info:
        list(reader)
    assert info.value.line_no == 3


def test_reiteration_resets_stats_and_gzip_works(tmp_path):
    lines = [criteo_line(str(i % 2)) for i in range(10)]
    path = write(tmp_path / "c.txt.gz", lines, opener=gzip.open)
    reader = CriteoReader(path, ReadOptions(batch_size=4, max_events=7))
    first = [len(b) for b in reader]
    second = [len(b) for b in reader]
    assert first == second == [4, 3]
    assert reader.stats.events == 7


def test_examples_are_bounded(tmp_path):
    path = write(tmp_path / "bad.txt", ["junk\n"] * 50)
    reader = CriteoReader(path, ReadOptions(max_examples=2))
    assert list(reader) == []
    assert reader.stats.malformed == 50 and len(reader.stats.examples) == 2


AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21\n"
)


def avazu_line(click, hour, rid="7"):
    return ",".join([rid, click, hour] + ["a"] * 21) + "\n"


def test_avazu_time_order_bad_hours_and_fields(tmp_path):
    lines = [
        AVAZU_HEADER,
        avazu_line("0", "14102100"),
        avazu_line("1", "14102101"),
        avazu_line("1", "14102100"),  # line 4: earlier hour than line 3
        avazu_line("0", "14133100"),  # line 5: no 31st of month 31
        avazu_line("0", "1410210"),  # line 6: 7 digits
        "1,0,14102102\n",  # line 7: too few fields
        avazu_line("1", "14102102"),
    ]
    reader = AvazuReader(write(tmp_path / "a.csv", lines))
    batch = SparseBatch.concat(list(reader))
    assert batch.labels.tolist() == [0.0, 1.0, 1.0]
    assert (batch.timestamps[1:] - batch.timestamps[:-1]).tolist() == [3600.0, 3600.0]
    assert [b.line_no for b in reader.stats.examples] == [4, 5, 6, 7]
    assert "earlier than the previous event" in reader.stats.examples[0].reason
    with pytest.raises(MalformedLineError, match=":4: timestamp earlier"):
        list(AvazuReader(tmp_path / "a.csv", ReadOptions(strict=True)))


def test_avazu_bad_header_fails_before_any_batch(tmp_path):
    path = write(tmp_path / "a.csv", ["id,click,hour\n", "1,0,14102100\n"])
    with pytest.raises(ValueError, match="header lacks the Avazu columns"):
        list(AvazuReader(path))


def test_table_size_overrides_are_checked(tmp_path):
    path = write(tmp_path / "c.txt", [criteo_line()])
    assert CriteoReader(path, table_sizes={"C3": 100}).schema.table_sizes[2] == 100
    with pytest.raises(ValueError, match="unknown feature 'C99'"):
        CriteoReader(path, table_sizes={"C99": 100})
    with pytest.raises(ValueError, match=r"table_sizes\['C3'\] must be"):
        CriteoReader(path, table_sizes={"C3": 1})
    with pytest.raises(FileNotFoundError):
        list(CriteoReader(tmp_path / "nope.txt"))


def movielens_dir(tmp_path, data_lines, user_lines=None):
    root = tmp_path / "ml"
    root.mkdir()
    write(root / "u.data", data_lines)
    write(root / "u.genre", ["unknown|0\n", "Action|1\n", "Comedy|2\n", "\n"])
    write(root / "u.occupation", ["none\n", "writer\n"])
    write(root / "u.user", user_lines or ["1|30|F|writer|12345\n", "2|x|M|none|55555\n"])
    write(root / "u.item", ["10|A (1990)|01-Jan-1990||url|0|1|1\n", "11|B|||url|0|0\n"])
    return root


def test_movielens_malformed_ratings_and_side_files(tmp_path):
    root = movielens_dir(
        tmp_path,
        [
            "1\t10\t5\t300\n",
            "1\t10\t9\t100\n",  # line 2: rating out of range
            "2\t10\t3\t200\n",
            "1\t11\n",  # line 4: too few fields
            "3\t12\t4\t100\n",  # unknown user and item: side features 0
        ],
    )
    reader = MovieLensReader(root, ReadOptions(batch_size=10))
    (batch,) = list(reader)
    assert batch.timestamps.tolist() == [100.0, 200.0, 300.0]  # sorted by time
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    reasons = [(b.line_no, b.reason) for b in reader.stats.examples]
    assert reasons == [
        (2, "u.user: invalid literal for int() with base 10: 'x'"),
        (2, "u.item: expected 5 fields and 3 0/1 genre flags"),
        (2, "u.data: rating must be in [0.5, 5], got '9'"),
        (4, "u.data: expected 4 fields, got 2"),
    ]
    # event at t=100 is user 3 / item 12, unknown to the side files
    assert batch.feature("user_age")[0].tolist() == [0, 0, 3]  # user 1 is 30: bucket 25-34
    assert batch.feature("user_occupation")[0].tolist() == [0, 0, 2]  # writer
    values, offsets = batch.feature("item_genres")  # item 10: Action, Comedy
    assert values.tolist() == [0, 2, 3, 2, 3] and offsets.tolist() == [0, 1, 3]
    assert batch.feature("item_year")[0].tolist() == [0, 1990 - 1869, 1990 - 1869]
    with pytest.raises(MalformedLineError, match=r"u.user:2: u.user: invalid literal"):
        list(MovieLensReader(root, ReadOptions(strict=True)))


def test_movielens_needs_a_ratings_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither u.data"):
        MovieLensReader(tmp_path)


CSV_LINES = [
    "ts,clicked,user,tags,price,note\n",
    "5,1,u1,a|b,2.5,x\n",
    "3,0,u2,,1.0,y\n",  # line 3 earlier than line 2: unsorted file
    '7,0,"u,3",c,,z\n',  # quoted comma; empty dense -> 0
    "8,1,u4,a,abc,z\n",  # line 5: bad dense
    "9,maybe,u5,a,1,z\n",  # line 6: bad label
]


def csv_reader(path, **kw):
    return CsvReader(
        path,
        label="clicked",
        time="ts",
        categorical=["user", "tags"],
        dense=["price"],
        multi_hot={"tags": "|"},
        num_rows=64,
        **kw,
    )


def test_generic_csv_unsorted_file_is_malformed_unless_sorted(tmp_path):
    path = write(tmp_path / "log.csv", CSV_LINES)
    plain = csv_reader(path)
    batch = SparseBatch.concat(list(plain))
    assert batch.timestamps.tolist() == [5.0, 7.0]
    assert [b.line_no for b in plain.stats.examples] == [3, 5, 6]
    assert plain.stats.by_reason["dense value is not a number"] == 1
    assert plain.stats.examples[1].detail == "'abc'"

    ordered = csv_reader(path, sort_by_time=True, dense_log1p=True)
    batch = SparseBatch.concat(list(ordered))
    assert batch.timestamps.tolist() == [3.0, 5.0, 7.0]
    assert batch.labels.tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(batch.dense[:, 0], torch.log1p(torch.tensor([1.0, 2.5, 0.0])))
    assert batch.lengths(1).tolist() == [1, 2, 1]  # empty bag -> [missing row]
    assert batch.feature("tags")[0][0].item() == 0


def test_generic_csv_threshold_labels_and_row_index_time(tmp_path):
    path = write(tmp_path / "r.csv", ["who,stars\n", "a,4.5\n", "b,2\n", "c,4\n"])
    reader = CsvReader(path, label="stars", categorical=["who"], label_threshold=4, qps=2.0)
    batch = SparseBatch.concat(list(reader))
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.timestamps.tolist() == [0.0, 0.5, 1.0]
    assert batch.dense.shape == (3, 0)


def test_generic_csv_configuration_errors(tmp_path):
    path = write(tmp_path / "log.csv", CSV_LINES)
    with pytest.raises(ValueError, match="one role only"):
        CsvReader(path, label="clicked", categorical=["clicked"])
    with pytest.raises(ValueError, match="at least one categorical"):
        CsvReader(path, label="clicked", categorical=[])
    with pytest.raises(ValueError, match="not categorical columns"):
        CsvReader(path, label="clicked", categorical=["user"], multi_hot={"tags": "|"})
    with pytest.raises(ValueError, match=r"header lacks the columns \['nope'\]"):
        list(CsvReader(path, label="clicked", categorical=["nope"]))
