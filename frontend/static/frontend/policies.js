// Policy editor: create or edit a policy through the API (its field errors shown at the fields),
// apply the saved version to one node or a group after confirmation, and show the history.
import { api, listAll, me } from "./api.js";
import { confirmAction, el } from "./dom.js";
import {
  epoch, errorText, fieldErrors, fmt, numberFieldError, numberFieldValue, TRAINING_MODE,
} from "./format.js";
import { onFleetEvent } from "./live.js";
import { appliedValue, overrideDetail, overrideText, overrideTexts } from "./overrides.js";

const form = document.getElementById("policy-form");
const state = {
  policies: [], nodes: [], current: null, dirty: false, canApply: false, pending: new Map(),
};

const inputs = () => [...form.querySelectorAll("input[name], select[name]")];

function clearErrors() {
  form.querySelectorAll(".field-error, #err-non_field_errors").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
  form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
}

function showErrors(data) {
  const errors = fieldErrors(data);
  const unplaced = [];
  Object.entries(errors).forEach(([field, message]) => {
    const slot = document.getElementById(`err-${field}`);
    if (slot && field !== "non_field_errors") {
      slot.textContent = message;
      slot.closest(".field").classList.add("invalid");
      const input = document.getElementById(`f-${field}`);
      if (input) input.setAttribute("aria-invalid", "true");
    } else {
      unplaced.push(field === "non_field_errors" || field === "detail" ? message : `${field}: ${message}`);
    }
  });
  document.getElementById("err-non_field_errors").textContent = unplaced.join(" ");
  const first = form.querySelector(".field.invalid input, .field.invalid select");
  if (first) first.focus();
}

// Every field's error at once, before a request: the number fields against their bounds, and
// the rank budget's order (the API says the same; this spares a round trip per mistake).
function clientErrors() {
  const errors = {};
  inputs().filter((i) => i.dataset.number).forEach((input) => {
    const message = numberFieldError(input.value, input.validity.badInput, input.dataset);
    if (message) errors[input.name] = message;
  });
  const [rMin, rMax] = ["r_min", "r_max"].map((n) => Number(form.elements[n].value));
  if (!errors.r_min && !errors.r_max && rMin > rMax) errors.r_max = "Must be >= r_min.";
  if (!form.elements.name.value.trim()) errors.name = "Required.";
  return errors;
}

// Fieldsets marked data-modes (the trainer's) show only for those modes.
function showModeFields() {
  const mode = form.elements.mode.value || TRAINING_MODE;
  form.querySelectorAll("fieldset[data-modes]").forEach((f) => {
    f.hidden = !f.dataset.modes.split(" ").includes(mode);
  });
}

// The form as the API wants it: numbers as numbers, an empty optional number as null, and
// anything the browser could not parse passed through so the API names the field.
function values() {
  const out = {};
  inputs().forEach((input) => {
    out[input.name] = input.dataset.number
      ? numberFieldValue(input.value, input.validity.badInput) : input.value.trim();
  });
  return out;
}

function fill(policy) {
  state.current = policy;
  inputs().forEach((input) => {
    if (input.name === "reason") input.value = "";
    else if (policy) input.value = policy[input.name] ?? "";
    else input.value = input.defaultValue;
  });
  if (!policy) form.querySelectorAll("select[name]").forEach((s) => {
    const def = [...s.options].find((o) => o.defaultSelected);
    if (def) s.value = def.value;
  });
  document.getElementById("editor-title").textContent = policy ? `Edit ${policy.name} (v${policy.version})` : "New policy";
  document.getElementById("save-status").textContent = "";
  state.dirty = false;
  clearErrors();
  showModeFields();
  renderList();
  renderApply();
  showOverrides();
  loadHistory();
}

// Under each overridable field: the watchdog's overrides of it on this policy's nodes (the
// policy keeps what people set; each node runs the stricter of the two).
function showOverrides() {
  const p = state.current;
  form.querySelectorAll("ul[id^=overrides-]").forEach((list) => {
    const field = list.id.slice("overrides-".length);
    const items = !p ? [] : state.nodes.filter((n) => n.policy === p.id).flatMap((n) =>
      n.overrides.filter((o) => o.field === field).map((o) => el("li", { class: "warn", title: overrideDetail(o) },
        el("strong", {}, n.name), `: ${overrideText(o, appliedValue(n, field))}`)));
    list.hidden = !items.length;
    list.replaceChildren(...items);
  });
}

function renderList() {
  const list = document.getElementById("policy-list");
  if (!state.policies.length) { list.replaceChildren(el("li", { class: "empty" }, "No policies yet.")); return; }
  list.replaceChildren(...state.policies.map((p) => el("li", {},
    el("button", { type: "button", class: `link${state.current && state.current.id === p.id ? " current" : ""}`,
      dataset: { policy: p.id }, onclick: () => fill(p) },
    `${p.name} `, el("span", { class: "sub" }, `v${p.version} · ${p.mode} · ${p.nodes.length} node${p.nodes.length === 1 ? "" : "s"}`)))));
}

function renderApply() {
  const p = state.current;
  document.getElementById("apply-hint").textContent = !p ? "Save the policy first."
    : state.dirty ? "You have unsaved changes: save them to apply them."
    : `Applies ${p.name} v${p.version} to the checked nodes (each node is assigned the policy and receives it).`;
  const checked = new Set([...document.querySelectorAll("#apply-nodes input:checked")].map((c) => c.value));
  const list = document.getElementById("apply-nodes");
  if (!state.nodes.length) list.replaceChildren(el("li", { class: "empty" }, "No nodes registered."));
  else list.replaceChildren(...state.nodes.map((n) => {
    const on = state.policies.find((q) => q.id === n.policy);
    return el("li", {}, el("label", {},
      el("input", { type: "checkbox", value: n.name, checked: checked.has(n.name), onchange: renderApplyButton }),
      ` ${n.name} `, el("span", { class: "sub" }, on ? `${on.name} v${on.version}${n.applied_policy_version === on.version ? "" : " (not applied)"}` : "no policy"),
      ...overrideTexts(n).map((text) => el("span", { class: "sub warn" }, ` · ${text}`))));
  }));
  renderApplyButton();
}
function renderApplyButton() {
  const n = document.querySelectorAll("#apply-nodes input:checked").length;
  const button = document.getElementById("apply-policy");
  button.disabled = !state.current || state.dirty || n === 0 || !state.canApply;
  button.textContent = `Apply to ${n} selected node${n === 1 ? "" : "s"}`;
}
const selectWhere = (pred) => {
  document.querySelectorAll("#apply-nodes input").forEach((c) => {
    c.checked = pred(state.nodes.find((n) => n.name === c.value));
  });
  renderApplyButton();
};

async function loadHistory() {
  const box = document.getElementById("history");
  if (!state.current) { box.replaceChildren(el("p", { class: "empty" }, "Pick a policy.")); return; }
  const res = await api("/api/policy-versions/", { params: { policy: state.current.id, limit: 50 } });
  if (!res.ok) { box.replaceChildren(el("p", { class: "error" }, errorText(res))); return; }
  const versions = res.data.results;
  if (!versions.length) { box.replaceChildren(el("p", { class: "empty" }, "No versions.")); return; }
  box.replaceChildren(el("table", { class: "responsive compact", id: "history-table" },
    el("thead", {}, el("tr", {}, ["Version", "When", "Who", "Why", "Changes"].map((h) => el("th", {}, h)))),
    el("tbody", {}, versions.map((v) => el("tr", { dataset: { version: v.version } },
      el("td", { dataset: { label: "Version" } }, `v${v.version}`),
      el("td", { dataset: { label: "When" } }, fmt.time(epoch(v.created))),
      el("td", { dataset: { label: "Who" } }, v.actor),
      el("td", { dataset: { label: "Why" } }, v.reason || "–"),
      el("td", { dataset: { label: "Changes" } }, el("div", {}, v.version === 1 ? "created" :
        Object.entries(v.changes).map(([k, [a, b]]) => el("div", {}, el("code", {}, k), `: ${a} → ${b}`)))))))));
}

async function load(selectId) {
  const [policies, nodes, user] = await Promise.all([listAll("/api/policies/"), listAll("/api/nodes/"), me()]);
  state.canApply = ["operator", "admin"].includes(user.role);
  document.getElementById("read-only-note").hidden = user.role === "admin";
  state.policies = policies;
  state.nodes = nodes;
  const id = selectId ?? (state.current && state.current.id);
  fill(policies.find((p) => p.id === id) || null);
}

form.addEventListener("input", () => { state.dirty = true; renderApply(); });
form.elements.mode.addEventListener("change", showModeFields);
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const status = document.getElementById("save-status");
  const mistakes = clientErrors();
  if (Object.keys(mistakes).length) {
    status.textContent = `Not saved: fix the ${fmt.plural(Object.keys(mistakes).length, "field")} marked in red.`;
    showErrors(mistakes);
    return;
  }
  status.textContent = "Saving…";
  const p = state.current;
  const res = await api(p ? `/api/policies/${p.id}/` : "/api/policies/", { method: p ? "PUT" : "POST", body: values() });
  if (!res.ok) {
    status.textContent = res.status === 400 ? "Not saved: fix the fields marked in red." : `Not saved: ${errorText(res)}`;
    if (res.status === 400) showErrors(res.data);
    return;
  }
  await load(res.data.id);
  status.textContent = `Saved ${res.data.name} as version ${res.data.version}.`;
});
document.getElementById("new-policy").addEventListener("click", () => fill(null));
document.getElementById("select-none").addEventListener("click", () => selectWhere(() => false));
document.getElementById("select-group").addEventListener("click", () => {
  const text = document.getElementById("group-filter").value.trim();
  selectWhere((n) => n.name.includes(text));
});
document.getElementById("select-policy-nodes").addEventListener("click", () =>
  selectWhere((n) => state.current && n.policy === state.current.id));

function result(name, text, cls, id) {
  const list = document.getElementById("apply-results");
  const existing = list.querySelector(`[data-node="${name}"]`);
  const item = el("li", { class: cls, dataset: { node: name, action: id || "" } }, el("strong", {}, name), `: ${text}`);
  if (existing) existing.replaceWith(item); else list.append(item);
}
const outcome = (a) => (a.state === "succeeded" ? ["confirmed by the node", "ok"]
  : a.state === "failed" ? [`failed: ${a.error}`, "error"] : ["sent, waiting for the node…", "pending"]);

async function follow(name, id) {
  for (;;) {
    await new Promise((r) => setTimeout(r, 1500));
    if (!state.pending.has(id)) return;
    const res = await api(`/api/actions/${id}/`);
    if (res.ok && res.data.state !== "sent") {
      state.pending.delete(id);
      result(name, ...outcome(res.data), id);
      return;
    }
  }
}

document.getElementById("apply-policy").addEventListener("click", async () => {
  const p = state.current;
  const names = [...document.querySelectorAll("#apply-nodes input:checked")].map((c) => c.value);
  if (!p || !names.length) return;
  const ok = await confirmAction(`Apply ${p.name} v${p.version} to ${names.length} node${names.length === 1 ? "" : "s"}?`,
    el("p", {}, "Mode ", el("strong", {}, p.mode), `, rank ${p.r_min}–${p.r_max}, memory budget ${p.memory_budget_pct} %, tau ${p.tau}, SLA ${p.sla_p99_ms} ms.`),
    el("ul", { class: "confirm-nodes" }, names.map((n) => el("li", {}, n))));
  if (!ok) return;
  document.getElementById("apply-results").replaceChildren();
  await Promise.all(names.map(async (name) => {
    const res = await api(`/api/nodes/${name}/apply_policy/`, { method: "POST", body: { policy: p.id } });
    if (res.status === 202) {
      state.pending.set(res.data.id, name);
      result(name, ...outcome(res.data), res.data.id);
      follow(name, res.data.id);
    } else if (res.status === 503) {
      result(name, `assigned, but not sent: ${res.data.error}`, "error", res.data.id);
    } else {
      result(name, errorText(res), "error");
    }
  }));
  const nodes = await listAll("/api/nodes/");
  state.nodes = nodes;
  const policies = await listAll("/api/policies/");
  state.policies = policies;
  renderList();
  renderApply();
  showOverrides();
});

// The watchdog's applies change nodes' overrides: show them as they happen.
async function reloadNodes() {
  state.nodes = await listAll("/api/nodes/");
  renderApply();
  showOverrides();
}

onFleetEvent((event) => {
  if (event.kind === "node_action" && event.action.action === "apply_policy" &&
    !state.pending.has(event.action.id) && event.action.state === "sent") reloadNodes();
  if (event.kind !== "node_action" || !state.pending.has(event.action.id)) return;
  if (event.action.state === "sent") return;
  state.pending.delete(event.action.id);
  result(event.node, ...outcome(event.action), event.action.id);
});

load().catch((err) => {
  document.getElementById("policy-list").replaceChildren(el("li", { class: "error" }, `Could not load: ${err.message}`));
});
