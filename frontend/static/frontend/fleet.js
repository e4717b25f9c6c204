// Fleet overview: every node's newest sample against its policy, and the open alerts, live.
(function () {
  const { listAll, el, fmt, epoch, isNum } = window.LU;
  const state = { nodes: new Map(), policies: new Map(), alerts: new Map(), loaded: false };

  function level(value, limit) {
    if (!isNum(value) || !isNum(limit)) return "";
    if (value > limit) return "bad";
    return value > 0.8 * limit ? "warn" : "ok";
  }

  // "value / limit" with a small bar showing how much of the limit is used.
  function gauge(value, limit, format, label) {
    if (!isNum(value)) return "–";
    const used = isNum(value) && isNum(limit) && limit > 0 ? Math.min(1, value / limit) : 0;
    return el("div", { class: `gauge ${level(value, limit)}`, title: label },
      el("span", {}, `${format(value)} / ${format(limit)}`),
      el("span", { class: "bar" }, el("span", { style: `width:${(used * 100).toFixed(0)}%` })));
  }

  function ranks(tables) {
    const names = Object.keys(tables || {}).sort();
    if (!names.length) return "–";
    return names.map((t) => `${t}: ${tables[t].rank}`).join(", ");
  }

  function row(node) {
    const s = node.latest || {};
    const policy = state.policies.get(node.policy);
    const sla = policy ? policy.sla_p99_ms : null;
    const budget = policy ? policy.memory_budget_pct : null;
    const stale = policy && node.applied_policy_version !== policy.version;
    const cells = [
      ["Node", el("a", { href: `/nodes/${node.name}/` }, node.name)],
      ["Status", el("span", { class: `badge ${node.status}` }, node.status),
        el("div", { class: "sub" }, fmt.ago(epoch(node.last_seen)))],
      ["Freshness lag", fmt.secs(s.freshness_lag_s)],
      ["AUC (window)", fmt.auc(s.auc)],
      ["P99 vs SLA", gauge(s.p99_ms, sla, fmt.ms, "inference P99 / SLA")],
      ["Memory vs budget", gauge(s.memory_overhead_pct, budget, fmt.pct, "LoRA memory % of tables / budget")],
      ["Rank", ranks(s.tables)],
      ["Trainer", s.throttle ? el("span", { class: `badge ${s.throttle}` }, s.throttle) : "–",
        el("div", { class: "sub" }, isNum(s.trainer_samples_per_s)
          ? `${s.trainer_samples_per_s.toFixed(0)} samples/s · duty ${(100 * s.trainer_duty).toFixed(0)} %` : "")],
      ["Policy", policy ? `${policy.name} v${policy.version}` : "none",
        stale ? el("div", { class: "sub warn" }, `applied: ${node.applied_policy_version ? "v" + node.applied_policy_version : "never"}`) : ""],
    ];
    return el("tr", { dataset: { node: node.name } },
      cells.map(([label, ...content]) => el("td", { dataset: { label } }, el("div", {}, content))));
  }

  function renderNodes() {
    const box = document.getElementById("fleet");
    const nodes = [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
    const online = nodes.filter((n) => n.status === "online").length;
    document.getElementById("fleet-summary").textContent =
      `${nodes.length} node${nodes.length === 1 ? "" : "s"}, ${online} online · ${state.alerts.size} open alert${state.alerts.size === 1 ? "" : "s"}`;
    if (!nodes.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No nodes registered yet (add one in the admin or with POST /api/nodes/)."));
      return;
    }
    const head = ["Node", "Status", "Freshness lag", "AUC (window)", "P99 vs SLA",
      "Memory vs budget", "Rank", "Trainer", "Policy"];
    box.replaceChildren(el("table", { class: "fleet responsive", id: "fleet-table" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, nodes.map(row))));
  }

  function renderAlerts() {
    const box = document.getElementById("alerts");
    const alerts = [...state.alerts.values()].sort((a, b) => b.raised_at - a.raised_at);
    document.getElementById("alert-count").textContent = alerts.length ? `(${alerts.length})` : "";
    if (!alerts.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No open alerts."));
      return;
    }
    box.replaceChildren(el("ul", { class: "alerts" }, alerts.map((a) =>
      el("li", { class: `alert ${a.severity}`, dataset: { alert: a.id } },
        el("span", { class: `badge ${a.severity}` }, a.severity),
        el("a", { href: `/nodes/${a.node}/` }, a.node), " ",
        el("strong", {}, a.kind.replace("_", " ")), " — ", a.message,
        el("span", { class: "sub" }, ` raised ${fmt.ago(a.raised_at)}`),
        a.acknowledged_by ? el("span", { class: "sub" }, ` · acknowledged by ${a.acknowledged_by}`)
          : el("button", { type: "button", class: "secondary small", "data-needs": "operator",
            onclick: () => acknowledge(a.id) }, "Acknowledge")))));
    LU.applyRole(box);
  }

  async function acknowledge(id) {
    const res = await LU.api(`/api/alerts/${id}/acknowledge/`, { method: "POST" });
    if (res.ok) state.alerts.set(id, { ...res.data, raised_at: epoch(res.data.raised_at) });
    else state.alerts.set(id, { ...state.alerts.get(id), message: `${state.alerts.get(id).message} (acknowledge failed: ${LU.errorText(res)})` });
    renderAlerts();
  }

  let inFlight = null;
  function load() { // coalesces bursts (several unknown nodes reporting at once)
    inFlight = inFlight || fetchAll().finally(() => { inFlight = null; });
    return inFlight;
  }
  async function fetchAll() {
    try {
      const [nodes, policies, alerts] = await Promise.all([
        listAll("/api/nodes/"), listAll("/api/policies/"), listAll("/api/alerts/", { open: "true" }),
      ]);
      state.nodes = new Map(nodes.map((n) => [n.name, n]));
      state.policies = new Map(policies.map((p) => [p.id, p]));
      state.alerts = new Map(alerts.map((a) => [a.id, { ...a, raised_at: epoch(a.raised_at) }]));
      state.loaded = true;
      renderNodes();
      renderAlerts();
    } catch (err) {
      document.getElementById("fleet").replaceChildren(el("p", { class: "error" }, `Could not load the fleet: ${err.message}`));
    }
  }

  window.onFleetEvent((event) => {
    if (!state.loaded || !event.node) return;
    const node = state.nodes.get(event.node);
    if (!node && (event.kind === "telemetry" || event.kind === "node_status")) { load(); return; }
    if (event.kind === "telemetry") {
      if (!node.latest || event.sample.seq >= node.latest.seq || event.sample.ts > node.latest.ts) {
        node.latest = event.sample;
        node.last_seen = new Date(event.sample.ts * 1000).toISOString();
        node.status = "online";
      }
      renderNodes();
    } else if (event.kind === "node_status") {
      node.status = event.status;
      node.last_seen = event.last_seen ? new Date(event.last_seen * 1000).toISOString() : null;
      renderNodes();
    } else if (event.kind === "alert") {
      if (event.alert.open) {
        const known = state.alerts.get(event.alert.id) || {};
        state.alerts.set(event.alert.id, { ...known, ...event.alert, node: event.node });
      }
      else state.alerts.delete(event.alert.id);
      renderAlerts();
      renderNodes();
    } else if (event.kind === "node_action" && event.action.action === "apply_policy") {
      load(); // the node's policy or applied version changed
    }
  });
  window.onFleetReconnect(load);
  setInterval(() => { if (state.loaded) renderNodes(); }, 5000); // refresh "… s ago"
  load();
})();
