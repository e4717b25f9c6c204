"""The protocol's summary: one table over the grid of fleet shapes, on stdout and as
report.html linking each shape's own report (protocol.json is what it reads)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

LOCAL = ("liveupdate", "liveupdate_dense", "hybrid")


def rows(protocol: dict[str, Any]) -> list[dict[str, str]]:
    """One row per fleet shape and strategy, every number rounded with its unit."""
    out = []
    for conf in protocol["configurations"]:
        res = conf["results"]
        verdicts = {c["id"]: c["verdict"] for c in res["claims"]}
        for name, s in res["strategies"].items():
            auc = s["ci95"]["mean_auc"]
            gain = s["ci95"]["mean_gain_vs_delta_sync_pct"]
            out.append({
                "shape": conf["label"],
                "strategy": name,
                "mean AUC": _interval(auc, "{:.4f}"),
                "gain vs delta_sync": _interval(gain, "{:+.2f}%"),
                "fleet MB/h": f"{s['bytes_per_hour'] / 1e6:.2f}",
                "fleet update CPU-s/h": f"{s['cpu_seconds_per_hour']:.1f}",
                "reach delta_sync (bytes, CPU)": _reach(res, name),
                "claims": ", ".join(f"{k}: {v}" for k, v in verdicts.items())
                if name == "liveupdate" else "",
            })  # fmt: skip
    return out


def _interval(ci: dict[str, Any] | None, form: str) -> str:
    if ci is None:
        return "–"
    text = form.format(ci["mean"])
    return text if ci["n"] < 2 else f"{text} [{form.format(ci['lo'])}, {form.format(ci['hi'])}]"


def _reach(results: dict[str, Any], name: str) -> str:
    """At the main sync period: the frontier point at which ``name`` reaches delta_sync's AUC
    most cheaply in bytes (its bytes and CPU ratios, its period), and the cheapest in CPU when
    that is another point."""
    if name not in LOCAL:
        return ""
    period = results["config"]["sync_period_s"]
    row = next((r for r in results["frontier_reading"] if r["sync_period_s"] == period), None)
    if row is None or name not in row:
        return "–"
    got = row[name]
    if got is None:
        return "never"
    text = _point(got["cheapest_bytes"])
    if got["cheapest_cpu"] != got["cheapest_bytes"]:
        text += f"; in CPU: {_point(got['cheapest_cpu'])}"
    return text


def _point(point: dict[str, Any]) -> str:
    ratios = ", ".join(
        f"{point[k]:.2f}x" if point[k] is not None else "–" for k in ("bytes_ratio", "cpu_ratio")
    )
    return f"{ratios} (its {point['sync_period_s'] / 60:g}-min point)"


def print_table(protocol: dict[str, Any]) -> None:
    table = rows(protocol)
    if not table:
        return
    cols = [c for c in table[0] if c != "claims"]
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    for conf in protocol["configurations"]:
        verdicts = "; ".join(f"{c['id']}: {c['verdict']}" for c in conf["results"]["claims"])
        print(f"{conf['label']}: {verdicts}")


def write_protocol_report(protocol: dict[str, Any], path: Path) -> None:
    table = rows(protocol)
    cols = list(table[0]) if table else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in cols) + "</tr>" for r in table
    )
    links = "".join(
        f"<li><a href='{html.escape(c['label'])}/report.html'>{html.escape(c['label'])}</a>: "
        f"{html.escape(c['results']['summary'])}</li>"
        for c in protocol["configurations"]
    )
    grid = protocol["grid"]
    periods = ", ".join(f"{p / 60:g}" for p in grid["sync_periods_s"])
    intro = (
        f"{len(grid['shapes'])} fleet shapes x sync periods of {periods} min x "
        f"{grid['seeds']} seed(s): {protocol['runs']} runs on {protocol['jobs']} worker "
        f"process(es) in {protocol['wall_seconds'] / 60:.1f} min of wall time. Intervals are "
        "95% over seeds; the reach column is the frontier point (bytes and CPU relative to "
        "delta_sync's, and its sync period) at which the local learner reaches delta_sync's "
        "AUC at the main sync period most cheaply in bytes, then in CPU when that is another "
        "point."
    )
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>LiveUpdate protocol</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>LiveUpdate protocol: {html.escape(str(protocol['dataset'].get('name', '')))}</h1>"
        f"<p>{html.escape(intro)}</p><table><tr>{head}</tr>{body}</table>"
        f"<h2>Each fleet shape</h2><ul>{links}</ul></body></html>"
    )
