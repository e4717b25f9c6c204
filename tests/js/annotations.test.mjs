// Chart annotations from node events and alerts (frontend/static/frontend/annotations.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addMarks, alertMarks, annotationLayout, eventMark, MARK_STYLES, MAX_DRAWN, MAX_MARKS, marksFromApi,
} from "../../frontend/static/frontend/annotations.js";

test("each annotated event kind becomes its mark, the others none", () => {
  const kinds = [
    ["policy", { name: "liveupdate", version: 4, overrides: {} }, "policy"],
    ["policy", { name: "liveupdate", version: 5, overrides: { max_trainer_duty: 0.05 } }, "override"],
    ["sync", { tables: { user: 10, item: 5 } }, "sync"],
    ["rebase", { checkpoint: "/data/demo-base.ckpt", keep_factors: false }, "rebase"],
    ["snapshot", { snapshot: "s-0003", version: 3 }, "snapshot"],
    ["snapshot", { restored: "s-0003" }, "restore"],
    ["snapshot", { refused: "s-0004", error: "digest mismatch" }, "restore"],
    ["restore", { snapshot: "s-0002" }, "restore"],
  ];
  kinds.forEach(([kind, detail, expected]) => {
    assert.equal(eventMark("edge-1", { kind, ts: 100, detail }).kind, expected, `${kind} ${JSON.stringify(detail)}`);
  });
  for (const kind of ["rank_change", "prune", "qos"]) {
    assert.equal(eventMark("edge-1", { kind, ts: 100, detail: {} }), null);
  }
  assert.equal(eventMark("edge-1", { kind: "sync", ts: null, detail: {} }), null); // no time, no line
});

test("a mark's text says what happened", () => {
  const override = eventMark("edge-1", { kind: "policy", ts: 5, detail: { name: "lu", version: 7, overrides: { max_trainer_duty: 0.05 } } });
  assert.deepEqual(override, { t: 5, kind: "override", node: "edge-1", text: "max_trainer_duty 0.05 (policy lu v7)" });
  assert.equal(eventMark("b", { kind: "sync", ts: 5, detail: { tables: { user: 10, item: 5 } } }).text,
    "15 rows landed (user 10, item 5)");
  assert.equal(eventMark("b", { kind: "snapshot", ts: 5, detail: { restored: "s-3" } }).text, "restored s-3");
});

test("an alert marks when it was raised and, once resolved, when it was resolved", () => {
  const open = { kind: "sla_violation", severity: "warning", message: "P99 over", raised_at: 50, resolved_at: null };
  assert.deepEqual(alertMarks("edge-1", open).map((m) => [m.t, m.kind]), [[50, "alert"]]);
  const closed = alertMarks("edge-1", { ...open, resolved_at: 80 });
  assert.deepEqual(closed.map((m) => [m.t, m.kind]), [[50, "alert"], [80, "resolved"]]);
  assert.equal(closed[0].text, "sla violation (warning): P99 over");
});

test("the API's ISO times are read as Unix seconds", () => {
  const marks = marksFromApi("edge-1",
    [{ kind: "sync", ts: "2026-01-01T00:00:10Z", detail: { tables: {} } }, { kind: "prune", ts: "2026-01-01T00:00:11Z", detail: {} }],
    [{ kind: "node_down", severity: "critical", message: "silent", raised_at: "2026-01-01T00:00:20Z", resolved_at: null }]);
  const t0 = Date.UTC(2026, 0, 1) / 1000;
  assert.deepEqual(marks.map((m) => [m.t - t0, m.kind]), [[10, "sync"], [20, "alert"]]);
});

test("marks are kept in time order, once each, the newest MAX_MARKS", () => {
  const list = [];
  const m = (t, kind = "sync") => ({ t, kind, node: "a", text: `at ${t}` });
  assert.equal(addMarks(list, [m(30), m(10)]), true);
  assert.equal(addMarks(list, [m(10), null]), false); // a live event the range load brought too
  addMarks(list, [m(20), m(20, "policy")]);
  assert.deepEqual(list.map((x) => [x.t, x.kind]), [[10, "sync"], [20, "sync"], [20, "policy"], [30, "sync"]]);
  addMarks(list, Array.from({ length: MAX_MARKS - 1 }, (_, i) => m(100 + i)));
  assert.equal(list.length, MAX_MARKS);
  assert.deepEqual(list.slice(0, 2).map((x) => x.t), [30, 100]); // the three oldest dropped
});

test("the layout has a vertical line and a hover marker per mark in the range", () => {
  const marks = [
    { t: 5, kind: "policy", node: "edge-1", text: "too early" },
    { t: 100, kind: "override", node: "edge-1", text: "max_trainer_duty 0.05" },
    { t: 150, kind: "sync", node: "edge-base", text: "15 rows <landed>" },
  ];
  const { shapes, annotations } = annotationLayout(marks, [50, 200], "edge-1");
  assert.equal(shapes.length, 2);
  assert.deepEqual(shapes.map((s) => [s.type, s.xref, s.yref, s.y0, s.y1, +s.x0 / 1000, +s.x1 / 1000]),
    [["line", "x", "paper", 0, 1, 100, 100], ["line", "x", "paper", 0, 1, 150, 150]]);
  assert.equal(shapes[0].line.color, MARK_STYLES.override.color);
  assert.deepEqual(annotations.map((a) => [a.text, +a.x / 1000, a.yref, a.showarrow]),
    [["W", 100, "paper", false], ["S", 150, "paper", false]]);
  assert.match(annotations[0].hovertext, /^<b>watchdog override<\/b> · .+<br>max_trainer_duty 0\.05$/);
  // another node's mark says whose it is; its text is escaped (Plotly renders hover HTML)
  assert.match(annotations[1].hovertext, /^<b>delta sync landed on edge-base<\/b>.*15 rows &lt;landed&gt;$/);
});

test("a long range draws only the newest MAX_DRAWN marks", () => {
  const marks = Array.from({ length: MAX_DRAWN + 40 }, (_, i) => ({ t: i, kind: "sync", node: "a", text: "" }));
  const { shapes } = annotationLayout(marks, [0, 1e9]);
  assert.equal(shapes.length, MAX_DRAWN);
  assert.equal(+shapes[0].x0 / 1000, 40);
});
