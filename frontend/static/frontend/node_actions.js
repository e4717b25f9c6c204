// Node page controls: trainer pause/resume, snapshot, rebase, policy assignment, each recorded
// as a node action whose outcome is shown when the node confirms (websocket event or polling
// GET /api/actions/<id>/, which refreshes the action from the result backend); the policy box
// and the node's recent events.
import { api, listAll } from "./api.js";
import { applyRole, confirmAction, el } from "./dom.js";
import { epoch, errorText, fmt, trainsLocally } from "./format.js";
import { describeResult, EVENT_KINDS, eventRows, KIND_LABELS } from "./events.js";
import { onFleetEvent } from "./live.js";

const actions = new Map(); // id -> NodeAction as the API shows it
const POLL_MS = 1500;
const MAX_EVENTS = 2000; // kept in the page for the folds and filters
const FOLD_S = 60;
let events = [];
const shownKinds = new Set(EVENT_KINDS);

function describe(a) {
  if (a.state === "succeeded") return "confirmed by the node";
  if (a.state === "failed") return `failed: ${a.error || "no detail"}`;
  if (a.state === "sent") return "sent, waiting for the node…";
  return a.state;
}

function actionItem(a) {
  return el("li", { class: `action ${a.state}`, dataset: { action: a.id, state: a.state } },
    el("span", { class: `badge ${a.state}` }, a.state), " ",
    el("strong", {}, a.action.replace("_", " ")), ` #${a.id} · ${describe(a)}`,
    a.result && a.state === "succeeded"
      ? el("div", { class: "sub result" }, describeResult(a.action, a.result)) : "",
    el("span", { class: "sub" }, ` · ${a.actor || ""} `,
      a.created ? el("span", { dataset: { ago: epoch(a.created) } }, fmt.ago(epoch(a.created))) : ""));
}

function renderLog() {
  const list = document.getElementById("action-log");
  const items = [...actions.values()].sort((a, b) => b.id - a.id).slice(0, 12);
  if (!items.length) { list.replaceChildren(el("li", { class: "empty" }, "None yet.")); return; }
  list.replaceChildren(...items.map(actionItem));
}

function track(record) {
  const known = actions.get(record.id) || {};
  actions.set(record.id, { ...known, ...record });
  renderLog();
  if (record.state === "sent" && !known.polling) poll(record.id);
}

async function poll(id) {
  actions.get(id).polling = true;
  while (actions.get(id).state === "sent") {
    await new Promise((r) => setTimeout(r, POLL_MS));
    const res = await api(`/api/actions/${id}/`);
    if (res.ok) { actions.set(id, { ...actions.get(id), ...res.data }); renderLog(); }
  }
}

function flash(text, kind = "error") {
  document.getElementById("action-log").prepend(el("li", { class: kind }, text));
}

// Resolves with the action once the node answered it (succeeded or failed).
export async function outcome(id) {
  while (!actions.has(id) || actions.get(id).state === "sent") {
    await new Promise((r) => setTimeout(r, POLL_MS / 3));
  }
  return actions.get(id);
}

export async function send(name, action, body) {
  const res = await api(`/api/nodes/${name}/${action}/`, { method: "POST", body });
  if (res.status === 202 || res.status === 503) {
    track(res.data); // 503: recorded, but the broker could not take it (its error is shown)
    return res.data;
  }
  flash(`${action}: ${errorText(res)}`);
  return null;
}

// The event filters: one checkbox per kind.
function renderFilters() {
  document.getElementById("event-filters").replaceChildren(...EVENT_KINDS.map((kind) =>
    el("label", { class: "chip" }, el("input", { type: "checkbox", value: kind, checked: shownKinds.has(kind),
      onchange: (e) => {
        if (e.target.checked) shownKinds.add(kind); else shownKinds.delete(kind);
        renderEvents();
      } }), ` ${KIND_LABELS[kind]}`)));
}

function renderEvents() {
  const box = document.getElementById("events");
  const rows = eventRows(events, { interval: FOLD_S, kinds: shownKinds }).slice(0, 30);
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "empty" }, events.length ? "No events of the checked kinds."
      : "No events reported."));
    return;
  }
  box.replaceChildren(el("table", { class: "responsive compact", id: "events-table" },
    el("thead", {}, el("tr", {}, ["Time", "Event", "Detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", { dataset: { kind: r.kind, count: r.count } },
      el("td", { dataset: { label: "Time" } }, fmt.time(r.ts)),
      el("td", { dataset: { label: "Event" } }, KIND_LABELS[r.kind] || r.kind,
        r.count > 1 ? el("span", { class: "sub" }, ` ×${r.count} in ${FOLD_S} s`) : ""),
      el("td", { dataset: { label: "Detail" } }, r.text))))));
}

// The assigned policy's main values, and the choice of policy to assign.
export function showPolicy(state) {
  const p = state.policy;
  const box = document.getElementById("policy-box");
  if (!p) {
    box.replaceChildren(el("p", { class: "empty" }, "No policy assigned: the node runs its defaults."));
  } else {
    const applied = state.node.applied_policy_version;
    const trainer = trainsLocally(p) ? [["Rank budget", `${p.r_min}–${p.r_max}`],
      ["Memory budget", `${p.memory_budget_pct} %`], ["tau", p.tau], ["Max trainer duty", p.max_trainer_duty],
      ["Delta rebase", p.rebase_period_s ? `every ${p.rebase_period_s} s (the cluster's rows and MLPs)` : "off"],
      ["Top MLP tuning", p.lr_top ? `last ${p.top_layers} layer(s) at lr ${p.lr_top}` : "off"]] : [];
    const rows = [
      ["Policy", `${p.name} v${p.version}${applied === p.version ? " (applied)" : ` (applied: ${applied ? `v${applied}` : "never"})`}`],
      ["Mode", p.mode], ...trainer, ["SLA P99", `${p.sla_p99_ms} ms`],
      ["AUC floor", p.auc_floor ?? "none"],
      ["Automatic rollback", p.rollback_after_intervals ? `after ${p.rollback_after_intervals} intervals under the AUC floor or the baseline` : "off"],
    ];
    box.replaceChildren(el("dl", { class: "facts" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])));
  }
  document.getElementById("assign-policy").replaceChildren(
    ...(p ? [] : [el("option", { value: "" }, "choose a policy…")]),
    ...[...state.policies.values()].map((q) =>
      el("option", { value: q.id, selected: p && q.id === p.id }, `${q.name} v${q.version}`)));
}

// The declared node operations (nodeworker.protocol.operations, passed by the page as JSON).
export const OPERATIONS = JSON.parse(document.getElementById("node-operations").textContent);

// One button per operation declared with button=true, shown for the modes that offer it
// (node.js hides the others), enabled for the role it needs.
function renderButtons(name) {
  const box = document.getElementById("operation-buttons");
  box.replaceChildren(...OPERATIONS.filter((op) => op.button).map((op) => el("button", {
    type: "button", dataset: { action: op.name, needs: op.role, modes: op.modes.join(" ") },
    onclick: async (e) => {
      const button = e.currentTarget;
      if (op.confirm && !(await confirmAction(op.confirm.replace("{node}", name),
        op.confirm_detail))) return;
      button.disabled = true;
      try { await send(name, op.name); } finally { button.disabled = false; }
    },
  }, op.label)));
  applyRole(box);
}

function bindControls(name) {
  renderButtons(name);
  document.getElementById("rebase-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const select = document.getElementById("checkpoint");
    if (!select.value) return;
    if (!(await confirmAction(`Rebase ${name} onto ${select.selectedOptions[0].textContent}?`,
      "The node loads this base checkpoint; its current LoRA correction is dropped."))) return;
    await send(name, "rebase", { checkpoint: Number(select.value) });
  });
  document.getElementById("assign-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const select = document.getElementById("assign-policy");
    if (!select.value) return;
    if (!(await confirmAction(`Apply policy ${select.selectedOptions[0].textContent} to ${name}?`,
      "The node is assigned this policy and receives it now."))) return;
    await send(name, "apply_policy", { policy: Number(select.value) });
  });
}

// Binds the controls, follows the node's actions and events live, loads the recent ones.
export async function startActions(name) {
  bindControls(name);
  onFleetEvent((event) => {
    if (event.node !== name) return;
    if (event.kind === "node_action") track({ ...(actions.get(event.action.id) || {}), ...event.action });
    if (event.kind === "rank_event" || event.kind === "node_event") {
      events.unshift({ ts: event.ts, kind: event.event, detail: event.detail });
      events.length = Math.min(events.length, MAX_EVENTS);
      renderEvents();
    }
  });
  const [recent, checkpoints, evs] = await Promise.all([
    api("/api/actions/", { params: { node: name, limit: 12 } }),
    listAll("/api/checkpoints/").catch(() => []),
    api("/api/events/", { params: { node: name, limit: 200 } }),
  ]);
  if (recent.ok) recent.data.results.forEach(track);
  document.getElementById("checkpoint").replaceChildren(
    el("option", { value: "" }, checkpoints.length ? "choose…" : "no checkpoints registered"),
    ...checkpoints.map((c) => el("option", { value: c.id }, `${c.name} (${fmt.time(epoch(c.created))})`)));
  events = evs.ok ? evs.data.results.map((e) => ({ ts: epoch(e.ts), kind: e.kind, detail: e.detail })) : [];
  renderFilters();
  renderEvents();
}
