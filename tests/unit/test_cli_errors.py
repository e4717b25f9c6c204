"""A user's mistake on the command line is one line on stderr and exit 2, never a traceback:
files with no usable line, missing columns, bad time formats, out-of-bounds flags, paths that
are missing, empty or folders. And a TalkingData-style log runs from one command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from controlplane.cli import OneLineErrorParser, join_dash_values, main
from tests.services import ROOT

TD = "ip,app,device,os,channel,click_time,attributed_time,is_attributed\n" + "".join(
    f"{1000 + i % 97},{i % 13},1,{i % 7},{100 + i % 31},"
    f"2017-11-07 {9 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},,"
    f"{int(i % 13 < 2 and i % 3 == 0)}\n"
    for i in range(0, 2400, 3)
)
TD_FLAGS = ["--label", "is_attributed", "--categorical", "ip,app,device,os,channel"]


@pytest.fixture
def td(tmp_path):
    path = tmp_path / "train_sample.csv"
    path.write_text(TD)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Runs the CLI; asserts exit 2 and one stderr line without a traceback; returns it."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def experiment(data, *flags: str) -> list[str]:
    return ["experiment", "--format", "csv", "--data", str(data), "--out", "/nonexistent/out",
            *TD_FLAGS, *flags]  # fmt: skip


def test_a_file_with_no_usable_line_names_the_reason_and_the_fix(td, capsys):
    line = one_line_error(
        capsys, experiment(td, "--time", "click_time", "--time-format", "%Y/%m/%d %H:%M:%S")
    )
    assert "0 usable events of 800 lines" in line and "time does not match" in line
    assert "fix --time-format" in line
    bad = td.with_name("dmy.csv")
    bad.write_text(TD.replace("2017-11-07", "07/11/2017"))
    line = one_line_error(capsys, experiment(bad, "--time", "click_time"))
    assert "time is neither a number nor an ISO 8601 date" in line and "give --time-format" in line
    line = one_line_error(capsys, experiment(td, "--delimiter", ";"))
    assert "wrong number of fields" not in line and "header lacks" in line  # one field per line


def test_missing_columns_and_time_formats_are_one_line(td, capsys):
    line = one_line_error(capsys, experiment(td, "--time", "clicktime"))
    assert "lacks the columns ['clicktime']" in line and "'click_time'" in line
    assert "--columns" not in line
    headerless = td.with_name("headerless.csv")
    headerless.write_text(TD.split("\n", 1)[1])
    line = one_line_error(capsys, experiment(headerless))
    assert line.endswith("the first line looks like data: name the columns with --columns")
    line = one_line_error(capsys, experiment(td, "--time", "click_time", "--time-format", "%Q"))
    assert "argument --time-format" in line and "bad directive" in line
    line = one_line_error(capsys, experiment(td, "--time-format", "%Y"))
    assert "--time-format needs --time" in line
    line = one_line_error(capsys, ["experiment", "--format", "csv", "--data", str(td),
                                   "--out", "x", "--label", "is_attributed"])  # fmt: skip
    assert "needs --label COLUMN and --categorical" in line


@pytest.mark.parametrize(
    "flag",
    [
        ["--batch-size", "0"], ["--batch-size", "9999999"], ["--max-events", "0"],
        ["--max-rows", "1"], ["--max-rows", "1e3"], ["--label-threshold", "inf"],
        ["--multi-hot", "tags"], ["--delimiter", "::"], ["--categorical", ","],
        ["--label", "a,b"],
    ],
)  # fmt: skip
def test_out_of_bounds_stream_flags(td, capsys, flag):
    for command in (experiment(td), ["analyze-gradients", "--format", "csv", "--data", str(td)]):
        line = one_line_error(capsys, [*command, *flag])
        assert line.startswith(f"liveupdate {command[0]}: error: argument {flag[0]}")


def test_paths_that_cannot_be_read(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("is_attributed,ip,app,device,os,channel\n")
    cases = {
        str(tmp_path / "nope.csv"): "no such data file",
        str(tmp_path): "is a folder",
        str(empty): "empty file, expected a header line",
        str(header_only): "no data lines",
    }
    for data, expected in cases.items():
        assert expected in one_line_error(capsys, experiment(data))
    line = one_line_error(capsys, ["analyze-gradients", "--format", "criteo", "--data",
                                   str(tmp_path / "nope.txt")])  # fmt: skip
    assert "no such data file" in line
    line = one_line_error(capsys, ["experiment", "--format", "criteo", "--data", str(empty),
                                   "--out", "x", "--label", "y"])  # fmt: skip
    assert "--label: only for --format csv" in line
    line = one_line_error(capsys, ["experiment", "--format", "synthetic", "--out", "x",
                                   "--time", "t", "--sort-by-time"])  # fmt: skip
    assert "--time, --sort-by-time: only for --format csv" in line


def test_token_values_may_start_with_a_dash():
    assert join_dash_values(["--token", "-abc", "--name", "n"]) == ["--token=-abc", "--name", "n"]
    assert join_dash_values(["--token=-abc"]) == ["--token=-abc"]
    parser = OneLineErrorParser(prog="p")
    parser.add_argument("--token")
    assert parser.parse_args(join_dash_values(["--token", "-x-y"])).token == "-x-y"


def test_no_traceback_from_the_installed_command(td):
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *experiment(td, "--time", "when")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"liveupdate experiment: error: {td}: the header lacks the columns ['when']; it has "
        "['ip', 'app', 'device', 'os', 'channel', 'click_time', 'attributed_time', "
        "'is_attributed'] (delimiter ',')"
    ]


def test_talkingdata_runs_from_one_command_line(td, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["experiment", "--format", "csv", "--data", str(td), *TD_FLAGS, "--time", "click_time",
         "--out", str(out), "--strategies", "stale,delta_sync", "--qps", "1",
         "--sync-period", "120", "--label-delay", "30", "--window", "300", "--batch-size", "64",
         "--threads", "1"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["malformed_lines"] == 0
    assert results["dataset"]["format"] == "csv"
    assert set(results["strategies"]) == {"stale", "delta_sync"}
