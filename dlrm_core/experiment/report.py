"""report.html: a self-contained offline report of a results.json (Plotly inlined once).

Numbers are rounded with their units; per-window curves use the fine windows beside the long
ones; gains carry their 95% interval over seeds; the frontier plots AUC against bytes/h and
against fleet CPU/h across sync periods; the "what this run says" paragraph is results.json's.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

# one colour per strategy in every figure
COLORS = {"stale": "#7f7f7f", "oracle": "#000000", "full_sync": "#d62728",
          "delta_sync": "#1f77b4", "prioritized_delta": "#2ca02c", "liveupdate": "#ff7f0e",
          "liveupdate_dense": "#9467bd", "hybrid": "#8c564b"}  # fmt: skip


def write_report(results: dict[str, Any], path: Path) -> None:
    """A single offline HTML file: plotly.js inlined once, figures and tables."""
    figs = _figures(results)
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    body = "\n".join([
        f"<h1>LiveUpdate freshness experiment: {html.escape(str(results['dataset']['name']))}"
        "</h1>",
        f"<h2>What this run says</h2><p>{html.escape(results['summary'])}</p>",
        _table("Clock mapping", list(results["clock"].items())),
        _summary_table(results),
        _claims_table(results["claims"]),
        _rank_table(results["strategies"]),
        *parts,
    ])  # fmt: skip
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>LiveUpdate experiment</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".held{color:#070}.not{color:#a00}</style></head><body>" + body + "</body></html>"
    )


def _figures(results: dict[str, Any]) -> list[Any]:
    import plotly.graph_objects as go  # plotting is only needed for the report

    names, strat = list(results["strategies"]), results["strategies"]
    hours = [(w["start_s"] + w["end_s"]) / 7200.0 for w in results["windows"]]
    fine = [(w["start_s"] + w["end_s"]) / 7200.0 for w in results["fine_windows"]]
    figs: list[Any] = []

    def fig(title: str, ytitle: str, xtitle: str = "clock time (h)") -> Any:
        f = go.Figure()
        f.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle, height=380)
        figs.append(f)
        return f

    def color(n: str) -> str:
        return COLORS.get(n, "#17becf")

    f = fig("AUC per window (lines: short windows; markers: long windows)", "AUC")
    for n in names:
        f.add_scatter(x=fine, y=strat[n]["auc_per_fine_window"], mode="lines", name=n,
                      line_color=color(n))  # fmt: skip
        f.add_scatter(x=hours, y=strat[n]["auc_per_window"], mode="markers", name=f"{n} (long)",
                      marker_color=color(n), showlegend=False)  # fmt: skip
    f = fig("AUC gain over delta_sync per short window, 95% interval over seeds",
            "relative AUC gain (%)")  # fmt: skip
    for n in names:
        if n == "delta_sync":
            continue
        cis = strat[n]["ci95"]["gain_vs_delta_sync_pct_per_fine_window"]
        mean = strat[n]["gain_vs_delta_sync_pct_per_fine_window"]
        plus = [None if c is None else c["hi"] - c["mean"] for c in cis]
        minus = [None if c is None else c["mean"] - c["lo"] for c in cis]
        f.add_scatter(x=fine, y=mean, mode="lines+markers", name=n, line_color=color(n),
                      error_y={"type": "data", "array": plus, "arrayminus": minus})  # fmt: skip
    _frontier_figures(results["frontier"], names, fig, color)
    _link_scale_figure(results.get("frontier_by_link_scale", []), names, fig, color)
    f = fig("Memory overhead per window, per node (peak)", "% of the node's table bytes")
    for n in names:
        f.add_scatter(x=hours, y=strat[n]["measured_memory_pct_per_window"], name=f"{n} measured",
                      mode="lines+markers", line_color=color(n))  # fmt: skip
        f.add_scatter(x=hours, y=strat[n]["memory_overhead_pct_per_window"], name=f"{n} budgeted",
                      mode="lines", line={"color": color(n), "dash": "dot"})  # fmt: skip
    if "liveupdate" in strat:
        f = fig("LiveUpdate rank per table over time (node 0)", "rank")
        ranks = strat["liveupdate"]["rank_per_window"]
        for table in sorted({t for r in ranks for t in r}):
            f.add_scatter(x=hours, y=[r.get(table) for r in ranks], name=table,
                          mode="lines+markers")  # fmt: skip
    sweep = results["label_delay_sweep"]
    if len(sweep) > 1:
        f = fig("Gain over delta_sync vs label delay", "mean relative AUC gain (%)",
                "label delay (s)")  # fmt: skip
        for n in names:
            if n != "delta_sync":
                f.add_scatter(x=[r["label_delay_s"] for r in sweep],
                              y=[r["gain_vs_delta_sync_pct"].get(n) for r in sweep],
                              name=n, mode="lines+markers", line_color=color(n))  # fmt: skip
    return figs


def _link_scale_figure(
    scales: list[dict[str, Any]], names: list[str], fig: Any, color: Any
) -> None:
    """The cost-accuracy frontier of each link scale (a sweep of --link-scales)."""
    if len(scales) > 1:
        f = fig("AUC vs sync period per link scale (staleness = bytes x scale / bandwidth)",
                "mean window AUC", "sync period (min)")  # fmt: skip
        dashes = ("solid", "dash", "dot", "dashdot", "longdash")
        for k, entry in enumerate(scales):
            dash = dashes[k % len(dashes)]
            for n in ("delta_sync", "full_sync", "prioritized_delta", "hybrid"):
                if n in names:
                    f.add_scatter(x=[r["sync_period_s"] / 60 for r in entry["frontier"]],
                                  y=[r["mean_auc"].get(n) for r in entry["frontier"]],
                                  name=f"{n} link x{entry['link_scale_factor']:g}",
                                  mode="lines+markers",
                                  line={"color": color(n), "dash": dash})  # fmt: skip


def _frontier_figures(
    frontier: list[dict[str, Any]],
    names: list[str],
    fig: Callable[[str, str, str], Any],
    color: Callable[[str], str],
) -> None:
    """The cost-accuracy frontiers (AUC vs bytes/h and vs CPU/h), through _figures' ``fig``."""
    for key, title, unit in (("bytes_per_hour", "bytes per hour (fleet)", "MB / h"),
                             ("cpu_seconds_per_hour", "fleet CPU per hour (with the cluster)",
                              "CPU-s / h")):  # fmt: skip
        f = fig(f"Cost-accuracy frontier: AUC vs {title}, one point per sync period",
                "mean window AUC", unit)  # fmt: skip
        scale = 1e-6 if key == "bytes_per_hour" else 1.0
        for n in names:
            pts = [(r[key].get(n), r["mean_auc"].get(n), r["sync_period_s"]) for r in frontier]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            f.add_scatter(
                x=[p[0] * scale for p in pts],
                y=[p[1] for p in pts],
                name=n,
                mode="lines+markers+text",
                line_color=color(n),
                text=[f"{p[2] / 60:g} min" for p in pts],
                textposition="top center",
            )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return html.escape(str(v))


UNITS = {  # column -> (header, format)
    "mean_auc": ("mean AUC", "{:.4f}"),
    "mean_gain_vs_delta_sync_pct": ("gain vs delta_sync", "{:+.2f}%"),
    "mean_logloss": ("log loss", "{:.4f}"),
    "bytes_per_hour": ("fleet MB / h", "MB"),
    "cpu_seconds_per_hour": ("fleet update CPU-s / h", "{:.1f}"),
    "peak_measured_memory_pct": ("peak memory / node (measured)", "{:.3f}%"),
    "mean_staleness_s": ("mean staleness", "{:.0f} s"),
}


def _cell(key: str, v: Any, ci: dict[str, Any] | None) -> str:
    if v is None:
        return "–"
    form = UNITS[key][1]
    text = f"{v / 1e6:,.2f} MB" if form == "MB" else form.format(v)
    if ci is not None and ci["n"] > 1:
        text += f" ± {form.format(ci['hi'] - ci['mean']).lstrip('+')}"
    return html.escape(text)


def _table(title: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<h2>{html.escape(title)}</h2><table>{cells}</table>"


def _summary_table(results: dict[str, Any]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ["strategy", *(u[0] for u in UNITS.values())])
    rows = "".join(
        "<tr>" + f"<th>{html.escape(n)}</th>"
        + "".join(f"<td>{_cell(c, s[c], s['ci95'].get(c))}</td>" for c in UNITS) + "</tr>"
        for n, s in results["strategies"].items()
    )  # fmt: skip
    return (
        f"<h2>Strategies (mean over {len(results['seeds'])} seed(s), ± half the 95% interval)"
        f"</h2><table><tr>{head}</tr>{rows}</table>"
    )


def _rank_table(strategies: dict[str, Any]) -> str:
    """Each LiveUpdate table's rank changes per window (node 0, the first seed), the most in
    any hour, and its growths after its region filled (run_summary's rank_changes)."""
    rows = []
    for name, s in strategies.items():
        for table, t in s.get("rank_changes", {}).items():
            full = t["full_after_s"]
            cells = [name, table, " ".join(map(str, t["changes_per_window"])),
                     t["max_changes_in_an_hour"], "never" if full is None else f"{full:.0f} s",
                     t["growths_after_full"], t["refused_growths"]]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = ("strategy", "table", "rank changes per window", "most in any hour", "region full at",
            "growths after full", "refused growths")  # fmt: skip
    return (
        "<h2>Rank changes (node 0, first seed)</h2><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    )  # fmt: skip


def _claims_table(items: list[dict[str, Any]]) -> str:
    rows = []
    for c in items:
        css = "held" if c["held"] else "not"
        rows.append(
            f"<tr><td>{html.escape(c['claim'])}</td><td class='{css}'>{c['verdict']}</td>"
            f"<td>{_fmt(c['measured'] or '')}</td><td>{_fmt(c['why'])}</td></tr>"
        )
    return (
        "<h2>Paper claims on this run</h2><table><tr><th>claim</th><th>verdict</th>"
        "<th>measured</th><th>why not</th></tr>" + "".join(rows) + "</table>"
    )
