"""bench/node_memory.py: the line through its runs at several budgets, and the budgets it
refuses."""

import pytest

from bench import node_memory
from bench.node_memory_report import budget_fit, fit_line


def test_the_line_through_collinear_points_is_exact():
    slope, intercept = fit_line([(1.0, 5.0), (2.0, 7.0), (4.0, 11.0)])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(3.0)


def test_a_line_needs_two_different_budgets():
    with pytest.raises(ValueError, match="two points with different x"):
        fit_line([(1.0, 5.0), (1.0, 6.0)])


def run(accounted: int, measured: int, table: int = 1_000_000) -> dict:
    """The part of node_memory.summary's result the fit reads."""
    return {
        "proportional_accounted_bytes": accounted,
        "proportional_measured_bytes": measured,
        "proportional_accounted_pct_of_tables": round(100 * accounted / table, 3),
        "proportional_measured_pct_of_tables": round(100 * measured / table, 3),
    }


def test_a_working_set_beside_the_rows_is_the_intercept_and_an_honest_account_a_slope_of_one():
    # 300 kB held at every budget, every accounted byte held once more
    fit = budget_fit([1.0, 2.0, 4.0], [run(a, 300_000 + a) for a in (10_000, 20_000, 40_000)])
    assert fit["slope"] == 1.0 and fit["intercept_bytes"] == 300_000
    assert [r["budget_pct"] for r in fit["runs"]] == [1.0, 2.0, 4.0]  # type: ignore[index]
    # an account missing half of what grows with the rows: a slope of 2
    fit = budget_fit([1.0, 4.0], [run(a, 2 * a) for a in (10_000, 40_000)])
    assert fit["slope"] == 2.0 and fit["intercept_bytes"] == 0


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--budget-pct", "0"], "a budget must be in (0, 10] %, got 0.0"),
        (["--compare-budgets", "1", "11"], "a budget must be in (0, 10] %, got 11.0"),
        (["--compare-budgets", "2"], "the budgets must differ, got [2.0, 2.0]"),
    ],
)
def test_budgets_out_of_the_policys_range_or_repeated_are_a_cli_error(argv, error, capsys):
    with pytest.raises(SystemExit) as refused:
        node_memory.main(argv)
    assert refused.value.code == 2
    assert error in capsys.readouterr().err
