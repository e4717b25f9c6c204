"""The csv click-log reader on small files written here: datetime and epoch times, text labels,
thresholds, multi-hot bags, sniffed delimiters, quoting, headerless files, malformed lines."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.commands import stream_args
from dlrm_core.readers import CsvLayout, CsvReader, ReadOptions, open_reader
from dlrm_core.readers import generic_csv as g
from dlrm_core.readers.timestamps import NO_MATCH, NOT_A_DATE, TimeParser

TD_HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed\n"
TD_CATEGORICAL = ("ip", "app", "device", "os", "channel")


def write(path, lines, encoding="utf-8"):
    path.write_text("".join(lines), encoding=encoding)
    return path


def read(reader) -> SparseBatch:
    return SparseBatch.concat(list(reader))


def utc(*fields) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


def talkingdata(tmp_path):
    return write(
        tmp_path / "train_sample.csv",
        [
            TD_HEADER,
            "87540,12,1,13,497,2017-11-07 09:30:38,,0\n",
            "105560,25,1,17,259,2017-11-07 13:40:27,2017-11-07 13:41:02,1\n",
            "101424,12,1,19,212,2017-11-07 18:05:24,,0\n",
            "94584,13,1,13,477,2017-11-07 04:58:08,,0\n",  # line 5: earlier than line 4
            "68413,12,1,1,178,2017-11-09 09:00:09,,0\n",
        ],
    )


def test_talkingdata_datetime_column_is_read_without_a_format(tmp_path):
    layout = CsvLayout(label="is_attributed", categorical=TD_CATEGORICAL, time="click_time")
    reader = open_reader("csv", talkingdata(tmp_path), csv=layout)
    batch = read(reader)
    assert batch.timestamps.tolist() == [
        utc(2017, 11, 7, 9, 30, 38),
        utc(2017, 11, 7, 13, 40, 27),
        utc(2017, 11, 7, 18, 5, 24),
        utc(2017, 11, 9, 9, 0, 9),
    ]
    assert batch.labels.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert reader.stats.by_reason == {"timestamp earlier than the previous event": 1}
    assert reader.stats.examples[0].line_no == 5

    sorted_layout = dataclasses.replace(layout, sort_by_time=True)
    ordered = open_reader("csv", tmp_path / "train_sample.csv", csv=sorted_layout)
    assert read(ordered).timestamps[0].item() == utc(2017, 11, 7, 4, 58, 8)
    assert ordered.stats.malformed == 0


def test_time_parser_formats():
    auto = TimeParser()
    assert auto("1510047038") == 1510047038.0
    assert auto("1510047038123") == pytest.approx(1510047038.123)  # milliseconds by size
    assert auto("1510047038123456") == pytest.approx(1510047038.123456)
    assert auto("1510047038123456789") == pytest.approx(1510047038.123456789)
    assert auto("2017-11-07T09:30:38+02:00") == utc(2017, 11, 7, 7, 30, 38)
    assert TimeParser("epoch-ms")("1000") == 1.0
    assert TimeParser("%d/%m/%Y %H:%M")("07/11/2017 09:30") == utc(2017, 11, 7, 9, 30)
    with pytest.raises(ValueError, match=NOT_A_DATE):
        auto("07/11/2017")
    with pytest.raises(ValueError, match=NO_MATCH):
        TimeParser("%Y-%m-%d")("07/11/2017")
    for bad in ("%Q", "dd/mm/yyyy", "epoch-days"):
        with pytest.raises(ValueError, match="time format"):
            TimeParser(bad)


def test_semicolons_epoch_millis_text_labels_and_spaces_in_the_header(tmp_path):
    path = write(
        tmp_path / "export.csv",
        [
            "\ufeffUser ID ; Item ; Clicked ; Time (ms) ; price\n",  # BOM, spaces, capitals
            "u1 ; a ; TRUE ; 1700000000000 ; 3\n",
            "u2 ; b ; false ; 1700000001500 ; NA\n",
            "u3 ; c ; Yes ; 1700000002000 ; \n",
            "u4 ; d ; maybe ; 1700000003000 ; 1\n",  # line 5: bad label
        ],
    )
    reader = CsvReader(
        path, label="clicked", categorical=["user id", "item"], dense=["price"],
        time="time (ms)", dense_log1p=True,
    )  # fmt: skip
    batch = read(reader)
    assert reader.field_delimiter == ";"
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.timestamps.tolist() == pytest.approx([1.7e9, 1.7e9 + 1.5, 1.7e9 + 2])
    assert batch.dense[:, 0].tolist() == pytest.approx(
        [torch.log1p(torch.tensor(3.0)).item(), 0, 0]
    )
    (bad,) = reader.stats.examples
    assert (bad.line_no, bad.reason, bad.detail) == (5, g.BAD_LABEL, "'maybe'")
    same = CsvReader(path, label="Clicked", categorical=["User ID", "Item"], time="Time (ms)")
    assert read(same).values[0].tolist() == batch.values[0].tolist()  # same ids, same rows


def test_label_threshold_multi_hot_and_tab_separated_without_header(tmp_path):
    path = write(
        tmp_path / "ratings.tsv",
        ["7\tm1\tcomedy|drama\t4.5\n", "8\tm2\t\t2\n", "9\tm1\tdrama\tx\n", "10\tm3\ta||b|\t4\n"],
    )
    reader = CsvReader(
        path, label="stars", categorical=["movie", "genres"], time="t",
        columns=["t", "movie", "genres", "stars"], label_threshold=4.0,
        multi_hot={"genres": "|"},
    )  # fmt: skip
    batch = read(reader)
    assert reader.field_delimiter == "\t"
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.lengths(1).tolist() == [2, 1, 2]  # empty bag -> the missing row; "" dropped
    assert batch.feature("genres")[0][2].item() == 0
    assert reader.stats.by_reason == {g.LABEL_NOT_NUMBER: 1}


def test_quoted_fields_newlines_and_an_unterminated_quote(tmp_path):
    path = write(
        tmp_path / "q.csv",
        [
            "ts,clicked,query\n",
            '1,1,"shoes, red"\n',
            '2,0,"two\nlines"\n',  # a record over lines 3-4
            "3,1,plain\n",  # line 5
            '4,0,"never closed\n',  # line 6: swallows to the end, then is malformed
            "5,1,lost\n",
        ],
    )
    reader = CsvReader(path, label="clicked", categorical=["query"], time="ts")
    batch = read(reader)
    assert batch.timestamps.tolist() == [1.0, 2.0, 3.0]
    assert reader.stats.by_reason == {g.UNTERMINATED_QUOTE: 1}
    assert reader.stats.examples[0].line_no == 6


def test_malformed_lines_are_counted_by_kind_with_first_examples(tmp_path):
    lines = ["ts,clicked,user\n"] + [f"{i},{i % 2},u{i}\n" for i in range(10)]
    lines += [f"{10 + i},{'x' if i % 2 else 1},u\n" for i in range(40)]  # 20 bad labels
    lines += ["60,1\n", "61,1,u,extra\n"]  # two field counts
    reader = CsvReader(write(tmp_path / "m.csv", lines), label="clicked", categorical=["user"],
                       time="ts", options=ReadOptions(max_examples=2))  # fmt: skip
    assert len(read(reader)) == 30
    st = reader.stats
    assert st.by_reason == {g.BAD_LABEL: 20, g.FIELD_COUNT: 2}  # one key per kind, not per value
    assert [(b.line_no, b.reason) for b in st.examples] == [
        (13, g.BAD_LABEL), (15, g.BAD_LABEL), (52, g.FIELD_COUNT),
    ]  # fmt: skip
    assert st.examples[2].detail == "expected 3, got 2"
    assert "20 x label is not 0/1" in st.summary() and "line 52" in st.summary()


def flags(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    stream_args.add_stream_arguments(parser, ("csv", "criteo"), batch_size=64)
    argv = ["--format", "csv"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", value] if value is not True else [f"--{key}"]
    return parser.parse_args(argv)


def test_flags_build_the_layout_and_explain_an_unusable_file(tmp_path, capsys):
    path = talkingdata(tmp_path)
    args = flags(data=str(path), label="is_attributed", categorical="ip,app",
                 time="click_time", multi_hot="channel:;")  # fmt: skip
    layout = stream_args.csv_layout(args)
    assert layout.categorical == ("ip", "app", "channel") and layout.multi_hot == (
        ("channel", ";"),
    )
    reader = stream_args.open_stream(args)
    assert stream_args.count_usable(reader) == 4
    summary = capsys.readouterr().err
    assert "1 x timestamp earlier than the previous event" in summary
    assert "e.g. line 5" in summary and "hint: add --sort-by-time" in summary

    args = flags(data=str(path), label="is_attributed", categorical="ip", time="click_time",
                 time_format="%d/%m/%Y %H:%M:%S")  # fmt: skip
    with pytest.raises(stream_args.StreamError) as info:
        stream_args.count_usable(stream_args.open_stream(args))
    message = str(info.value)
    assert "\n" not in message and "0 usable events of 5 lines" in message
    assert f"5 malformed as '{NO_MATCH}', first on line 2" in message
    assert "fix --time-format" in message

    args = flags(data=str(path), label="app", categorical="ip")
    with pytest.raises(stream_args.StreamError, match="--label-threshold"):
        stream_args.count_usable(stream_args.open_stream(args))
    with pytest.raises(stream_args.StreamError, match="only for --format csv"):
        stream_args.open_stream(argparse.Namespace(**{**vars(args), "format": "criteo"}))
