// Node page data: a server-downsampled range query for history, the websocket for live samples,
// rank and QoS events for the rank and throttle history. Charts are drawn by node_charts.js.
(function () {
  const { api, listAll, el, fmt, epoch, isNum } = window.LU;
  const NAME = document.getElementById("node-page").dataset.node;
  const METRICS = ["auc", "p99_ms", "memory_overhead_pct", "trainer_samples_per_s", "trainer_duty"];
  const MAX_LIVE_POINTS = 20000; // a week of buckets plus a long live session stays well below
  const emptySeries = () => ({ t: [], auc: [], p99: [], mem: [], sps: [], duty: [] });

  const state = {
    name: NAME, node: null, policy: null, nodes: [], policies: new Map(), baseline: "",
    range: { live: true, seconds: 900 }, bucket_s: 1, main: emptySeries(), base: emptySeries(),
    throttle: { t: [], s: [] }, ranks: {}, rankMarks: { t: [], r: [], text: [], table: [], from: [] },
    cpu: { values: [], ts: null }, placement: null, lastSeq: {}, loading: 0,
  };
  window.NodePage = { state };

  function rangeBounds() {
    const r = state.range;
    const end = r.live ? Date.now() / 1000 : r.end;
    return [r.live ? end - r.seconds : r.start, end];
  }
  const iso = (s) => new Date(s * 1000).toISOString();

  function pushPoint(series, t, v) {
    series.t.push(t);
    series.auc.push(v.auc ?? null);
    series.p99.push(v.p99_ms ?? null);
    series.mem.push(v.memory_overhead_pct ?? null);
    series.sps.push(v.trainer_samples_per_s ?? null);
    series.duty.push(v.trainer_duty ?? null);
  }

  // A range query's buckets (columns: series.t, and metric -> one value per bucket) as points.
  function pushColumns(target, series, mid, columns) {
    const names = Object.keys(columns);
    series.t.forEach((t, i) => pushPoint(target, t + mid,
      Object.fromEntries(names.map((m) => [m, columns[m] && columns[m][i]]))));
  }

  // Rank events carry {table, from, to} (names vary between producers: accept the usual ones).
  function rankTo(detail) {
    for (const k of ["to", "to_value", "rank", "new_rank"]) if (isNum(detail[k])) return detail[k];
    return null;
  }
  function addRank(table, t, r) {
    const s = (state.ranks[table] = state.ranks[table] || { t: [], r: [] });
    s.t.push(t);
    s.r.push(r);
  }
  function addRankEvent(ts, detail) {
    const to = rankTo(detail);
    if (!detail.table || to === null) return;
    addRank(detail.table, ts, to);
    const from = detail.from ?? detail.from_value ?? detail.old_rank;
    state.rankMarks.t.push(ts);
    state.rankMarks.r.push(to);
    state.rankMarks.text.push(`${detail.table}: ${from ?? "?"} → ${to}${detail.reason ? ` (${detail.reason})` : ""}`);
    state.rankMarks.table.push(detail.table);
    state.rankMarks.from.push(isNum(from) ? from : null);
  }
  function sortRanks() {
    Object.values(state.ranks).forEach((s) => {
      const order = s.t.map((t, i) => i).sort((a, b) => s.t[a] - s.t[b]);
      s.t = order.map((i) => s.t[i]);
      s.r = order.map((i) => s.r[i]);
    });
  }

  // A rank only changes through a rank event, so before a table's first event in the range it
  // held that event's "from" rank, and a table without events held its rank all along.
  function holdRanks(since) {
    Object.entries(state.ranks).forEach(([table, s]) => {
      if (!s.t.length || s.t[0] <= since) return;
      const m = state.rankMarks;
      const i = m.t.findIndex((t, j) => t === s.t[0] && m.table[j] === table);
      const from = i >= 0 ? m.from[i] : s.r[0];
      if (!isNum(from)) return;
      s.t.unshift(since);
      s.r.unshift(from);
    });
  }

  function addSample(sample) {
    pushPoint(state.main, sample.ts, sample);
    state.throttle.t.push(sample.ts);
    state.throttle.s.push(sample.throttle);
    Object.entries(sample.tables || {}).forEach(([table, info]) => addRank(table, sample.ts, info.rank));
    if (!isNum(state.cpu.ts) || sample.ts >= state.cpu.ts) {
      state.cpu = { values: sample.cpu_per_core || [], ts: sample.ts };
    }
  }

  async function loadSeries(node, start, end) {
    const res = await api("/api/telemetry/", {
      params: { node, start: iso(start), end: iso(end), metrics: METRICS.join(",") },
    });
    if (!res.ok) throw new Error(`telemetry of ${node}: ${LU.errorText(res)}`);
    return res.data;
  }

  // Reload everything for the current range (history from the server, downsampled there).
  async function loadRange() {
    const token = ++state.loading;
    const [start, end] = rangeBounds();
    const info = document.getElementById("range-info");
    info.textContent = "Loading…";
    try {
      const [series, base, rankEvents, qosEvents, placed] = await Promise.all([
        loadSeries(NAME, start, end),
        state.baseline ? loadSeries(state.baseline, start, end) : null,
        listAll("/api/rank-events/", { node: NAME, since: iso(start), until: iso(end), limit: 500 }),
        listAll("/api/events/", { node: NAME, kind: "qos", since: iso(start), until: iso(end), limit: 500 }),
        api("/api/events/", { params: { node: NAME, kind: "policy", limit: 1 } }),
      ]);
      const newest = placed.ok && placed.data.results[0];
      if (newest && newest.detail.placement) state.placement = newest.detail.placement;
      if (token !== state.loading) return; // a newer range was picked meanwhile
      state.bucket_s = series.bucket_s;
      state.main = emptySeries();
      state.base = emptySeries();
      state.ranks = {};
      state.rankMarks = { t: [], r: [], text: [], table: [], from: [] };
      state.throttle = { t: [], s: [] };
      const mid = series.bucket_s > 1 ? series.bucket_s / 2 : 0;
      pushColumns(state.main, series, mid, { ...series.avg,
        p99_ms: series.max.p99_ms, memory_overhead_pct: series.max.memory_overhead_pct });
      if (base) pushColumns(state.base, base, mid, base.avg);
      rankEvents.reverse().forEach((e) => addRankEvent(epoch(e.ts), e.detail));
      qosEvents.reverse().forEach((e) => {
        if (THROTTLE_OK(e.detail.state)) { state.throttle.t.push(epoch(e.ts)); state.throttle.s.push(e.detail.state); }
      });
      const latest = state.node && state.node.latest;
      if (latest && latest.ts >= start && latest.ts <= end) {
        Object.entries(latest.tables || {}).forEach(([table, info]) => addRank(table, latest.ts, info.rank));
        state.throttle.t.push(latest.ts);
        state.throttle.s.push(latest.throttle);
      }
      if (latest) state.cpu = { values: latest.cpu_per_core || [], ts: latest.ts };
      sortRanks();
      holdRanks(state.main.t.length ? Math.max(start, state.main.t[0]) : start);
      state.lastSeq[NAME] = latest ? latest.seq : -1;
      const n = series.t.length;
      info.textContent = `${fmt.time(start)} – ${state.range.live ? "now (live)" : fmt.time(end)} · ` +
        `${n} point${n === 1 ? "" : "s"} · bucket ${series.bucket_s} s (averaged on the server; ` +
        `P99 and memory show each bucket's maximum)`;
      window.NodeCharts.render(state);
    } catch (err) {
      if (token === state.loading) info.textContent = `Could not load the range: ${err.message}`;
    }
  }
  const THROTTLE_OK = (s) => ["running", "throttled", "paused"].includes(s);

  function trim() {
    if (!state.range.live) return;
    const [start] = rangeBounds();
    for (const s of [state.main, state.base]) {
      let drop = 0;
      while (drop < s.t.length && s.t[drop] < start) drop += 1;
      drop = Math.max(drop, s.t.length - MAX_LIVE_POINTS);
      if (drop > 0) Object.keys(s).forEach((k) => s[k].splice(0, drop));
    }
  }

  function summary() {
    const n = state.node;
    if (!n) return;
    const s = n.latest || {};
    const p = state.policy;
    document.getElementById("node-summary").replaceChildren(
      el("span", { class: `badge ${n.status}` }, n.status), " ",
      `last seen ${fmt.ago(epoch(n.last_seen))}`,
      n.host ? ` · host ${n.host}` : "",
      ` · freshness lag ${fmt.secs(s.freshness_lag_s)} · AUC ${fmt.auc(s.auc)} · P99 ${fmt.ms(s.p99_ms)}`,
      p ? ` (SLA ${p.sla_p99_ms} ms)` : "",
      ` · memory ${fmt.pct(s.memory_overhead_pct)}`, p ? ` (budget ${p.memory_budget_pct} %)` : "",
      s.throttle ? ` · trainer ${s.throttle}` : "");
  }

  function fillBaselines() {
    const select = document.getElementById("baseline");
    const others = state.nodes.filter((n) => n.name !== NAME);
    select.replaceChildren(el("option", { value: "" }, "none"), ...others.map((n) => {
      const p = state.policies.get(n.policy);
      return el("option", { value: n.name }, `${n.name}${p ? ` (${p.mode})` : ""}`);
    }));
    select.value = state.baseline;
  }

  async function loadNode() {
    const [nodeRes, nodes, policies] = await Promise.all([
      api(`/api/nodes/${NAME}/`), listAll("/api/nodes/"), listAll("/api/policies/"),
    ]);
    if (!nodeRes.ok) {
      document.getElementById("node-summary").replaceChildren(el("span", { class: "error" },
        nodeRes.status === 404 ? `There is no node named ${NAME}.` : LU.errorText(nodeRes)));
      return false;
    }
    state.node = nodeRes.data;
    state.nodes = nodes;
    state.policies = new Map(policies.map((p) => [p.id, p]));
    state.policy = state.policies.get(state.node.policy) || null;
    if (state.baseline === "" && !state.baselineChosen) {
      // Default baseline: a node running a non-LiveUpdate mode (delta sync or frozen), if any.
      const base = nodes.find((n) => n.name !== NAME &&
        ["delta_sync", "frozen"].includes((state.policies.get(n.policy) || {}).mode));
      state.baseline = base ? base.name : "";
    }
    fillBaselines();
    summary();
    window.dispatchEvent(new CustomEvent("node-loaded", { detail: state }));
    return true;
  }

  // Live redraws: one chart per task (the page stays responsive and each chart shows up as soon
  // as it is drawn); events arriving meanwhile are folded into one more pass.
  let rendering = false;
  let dirty = false;
  let lastRender = 0;
  function scheduleRender() {
    if (rendering) { dirty = true; return; }
    rendering = true;
    dirty = false;
    const steps = window.NodeCharts.steps;
    let i = 0;
    const next = () => {
      if (i < steps.length) { steps[i++](state); setTimeout(next, 0); return; }
      rendering = false;
      lastRender = Date.now();
      if (dirty) scheduleRender();
    };
    requestAnimationFrame(next);
  }

  function onTelemetry(event) {
    const sample = event.sample;
    if (sample.seq <= (state.lastSeq[event.node] ?? -1)) return; // already shown
    state.lastSeq[event.node] = sample.seq;
    const [start, end] = rangeBounds();
    const inRange = state.range.live || (sample.ts >= start && sample.ts < end);
    if (event.node === NAME) {
      state.node.latest = sample;
      state.node.status = "online";
      state.node.last_seen = new Date(sample.ts * 1000).toISOString();
      summary();
      if (inRange) addSample(sample);
    } else if (event.node === state.baseline && inRange) {
      pushPoint(state.base, sample.ts, sample);
    } else {
      return;
    }
    trim();
    scheduleRender();
  }

  window.onFleetEvent((event) => {
    if (event.kind === "telemetry") onTelemetry(event);
    else if (event.node !== NAME) return;
    else if (event.kind === "node_event" && event.event === "policy" && event.detail.placement) {
      state.placement = event.detail.placement;
      scheduleRender();
    } else if (event.kind === "rank_event" && state.range.live) {
      addRankEvent(event.ts, event.detail);
      sortRanks();
      scheduleRender();
    } else if (event.kind === "node_status" && state.node) {
      state.node.status = event.status;
      state.node.last_seen = event.last_seen ? new Date(event.last_seen * 1000).toISOString() : null;
      summary();
    } else if (event.kind === "node_action" && event.action.action === "apply_policy") {
      loadNode().then(() => window.NodeCharts.renderLimits(state));
    }
  });
  window.onFleetReconnect(() => loadNode().then(loadRange));

  function pickRange(seconds) {
    state.range = { live: true, seconds };
    document.querySelectorAll("[data-range]").forEach((b) =>
      b.setAttribute("aria-pressed", String(Number(b.dataset.range) === seconds)));
    loadRange();
  }
  document.querySelectorAll("[data-range]").forEach((b) =>
    b.addEventListener("click", () => pickRange(Number(b.dataset.range))));
  document.getElementById("custom-range").addEventListener("submit", (e) => {
    e.preventDefault();
    const start = Date.parse(document.getElementById("range-start").value) / 1000;
    const end = Date.parse(document.getElementById("range-end").value) / 1000;
    const info = document.getElementById("range-info");
    if (!(isNum(start) && isNum(end)) || end <= start) {
      info.textContent = "Pick a start before the end.";
      return;
    }
    state.range = { live: false, start, end };
    document.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", "false"));
    loadRange();
  });
  document.getElementById("baseline").addEventListener("change", (e) => {
    state.baseline = e.target.value;
    state.baselineChosen = true;
    window.watchNodes([NAME, state.baseline].filter(Boolean));
    loadRange();
  });
  // Keep a live window scrolling and the "last seen" text fresh when no samples arrive.
  setInterval(() => {
    if (!state.range.live || !state.node) return;
    summary();
    if (Date.now() - lastRender > 4500) { trim(); scheduleRender(); }
  }, 5000);

  (async () => {
    const local = (s) => new Date((s - new Date().getTimezoneOffset() * 60) * 1000).toISOString().slice(0, 19);
    const now = Date.now() / 1000;
    document.getElementById("range-start").value = local(now - 3600);
    document.getElementById("range-end").value = local(now);
    if (await loadNode()) {
      window.watchNodes([NAME, state.baseline].filter(Boolean));
      pickRange(900);
    }
  })();
})();
