// The node page's data, as plain arrays Plotly draws: the metric series (the server's buckets,
// then live samples), the rank history of each table and the trainer's throttle states. Pure
// functions and containers (no DOM, no network), unit-tested in tests/js/.

// A live window keeps at most this many points per series (a week of buckets plus a long live
// session stays well below).
export const MAX_LIVE_POINTS = 20000;
export const THROTTLE_STATES = ["running", "throttled", "paused"];

// [start, end] in Unix seconds of a range: {live: true, seconds} ends now, else {start, end}.
export function rangeBounds(range, now = Date.now() / 1000) {
  if (range.live) return [now - range.seconds, now];
  return [range.start, range.end];
}

// Column of the page's series -> the API's metric name.
export const COLUMNS = {
  auc: "auc", p99: "p99_ms", p95: "p95_ms", p50: "p50_ms", qps: "qps", logloss: "logloss",
  mem: "memory_overhead_pct", sps: "trainer_samples_per_s", duty: "trainer_duty",
  fresh: "freshness_lag_s", skipped: "skipped_batches", dropped: "dropped_samples",
};
export const SERIES_METRICS = Object.values(COLUMNS);

export const emptySeries = () => ({ t: [], ...Object.fromEntries(Object.keys(COLUMNS).map((c) => [c, []])) });

// One point from a sample (or a bucket's values), keyed by the API's metric names.
export function pushPoint(series, t, v) {
  series.t.push(t);
  Object.entries(COLUMNS).forEach(([column, metric]) => series[column].push(v[metric] ?? null));
}

// The top of a chart's y axis that keeps a start-up spike from setting the scale: the
// `q` quantile of the values times `headroom`, never below `floor` (e.g. the SLA line, so it
// stays in view), and null (let Plotly choose) when nothing is clipped.
export function clippedTop(values, { q = 0.98, headroom = 1.25, floor = 0 } = {}) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const top = Math.max(floor * 1.1, v[Math.min(v.length - 1, Math.floor(q * (v.length - 1)))] * headroom);
  return v[v.length - 1] > top ? top : null;
}

// The buckets of a range query as points: `times` are the buckets' starts, each point is drawn
// `offset` seconds later (the middle of a bucket), `columns` maps a metric to one value per
// bucket.
export function pushBuckets(series, times, offset, columns) {
  const names = Object.keys(columns);
  times.forEach((t, i) => pushPoint(series, t + offset,
    Object.fromEntries(names.map((m) => [m, columns[m] ? columns[m][i] : undefined]))));
}

// Drops the points before `start`, and the oldest beyond `maxPoints`, from every column.
export function trimSeries(series, start, maxPoints = MAX_LIVE_POINTS) {
  let drop = 0;
  while (drop < series.t.length && series.t[drop] < start) drop += 1;
  drop = Math.max(drop, series.t.length - maxPoints);
  if (drop > 0) Object.values(series).forEach((column) => column.splice(0, drop));
}

// Each table's rank over time ({table: {t, r}}), and the rank changes to mark on the chart.
export class RankHistory {
  constructor() {
    this.tables = {};
    this.marks = { t: [], r: [], text: [], table: [], from: [] };
  }

  add(table, t, rank) {
    const s = (this.tables[table] = this.tables[table] || { t: [], r: [] });
    s.t.push(t);
    s.r.push(rank);
  }

  // A rank_change event's detail, as the node reports it: {table, from, to, reason}.
  addChange(ts, { table, from, to, reason }) {
    if (!table || !Number.isFinite(to)) return;
    this.add(table, ts, to);
    this.marks.t.push(ts);
    this.marks.r.push(to);
    this.marks.text.push(`${table}: ${from ?? "?"} → ${to}${reason ? ` (${reason})` : ""}`);
    this.marks.table.push(table);
    this.marks.from.push(Number.isFinite(from) ? from : null);
  }

  // Every table's points in time order (events and samples arrive in either order).
  sort() {
    Object.values(this.tables).forEach((s) => {
      const order = s.t.map((t, i) => i).sort((a, b) => s.t[a] - s.t[b]);
      s.t = order.map((i) => s.t[i]);
      s.r = order.map((i) => s.r[i]);
    });
  }

  // A rank only changes through a rank change, so from `since` until a table's first change it
  // held that change's "from" rank (call after sort()).
  holdFrom(since) {
    Object.entries(this.tables).forEach(([table, s]) => {
      if (!s.t.length || s.t[0] <= since) return;
      const m = this.marks;
      const i = m.t.findIndex((t, j) => t === s.t[0] && m.table[j] === table);
      const from = i >= 0 ? m.from[i] : s.r[0];
      if (!Number.isFinite(from)) return;
      s.t.unshift(since);
      s.r.unshift(from);
    });
  }
}
