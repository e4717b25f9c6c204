// The node's snapshots (asked of the node with the list_snapshots action): time, base
// checkpoint, rank and folded rows per table, AUC when taken; each with a one-click Restore
// (restore_snapshot, confirmed as its declaration says), and the bare base.
import { applyRole, confirmAction, el } from "./dom.js";
import { fmt } from "./format.js";
import { shortName } from "./events.js";
import { OPERATIONS, outcome, send } from "./node_actions.js";

const RESTORE = OPERATIONS.find((op) => op.name === "restore_snapshot");

const perTable = (tables, key) => Object.entries(tables || {}).map(([t, v]) => `${t} ${v[key]}`).join(" · ") || "–";

function restoreButton(node, snapshot, label) {
  return el("button", { type: "button", class: "secondary", dataset: { restore: snapshot, needs: RESTORE.role },
    disabled: snapshot !== "base" && !label.restorable,
    onclick: async () => {
      const ok = await confirmAction(RESTORE.confirm.replace("{node}", node),
        `${snapshot === "base" ? "The bare base checkpoint, without LoRA factors" : `Snapshot ${snapshot}`} ` +
        `will be served. ${RESTORE.confirm_detail}`);
      if (!ok) return;
      const record = await send(node, "restore_snapshot", { name: snapshot });
      if (record && (await outcome(record.id)).state === "succeeded") await loadSnapshots(node);
    } }, label.text);
}

function render(node, listing) {
  const box = document.getElementById("snapshots");
  if (!listing || !Array.isArray(listing.snapshots)) {
    box.replaceChildren(el("p", { class: "error" }, "The node's answer holds no snapshot list."));
    return;
  }
  const rows = listing.snapshots.map((s) => el("tr", { dataset: { snapshot: s.name } },
    el("td", { dataset: { label: "Taken" } }, fmt.time(s.ts), el("div", { class: "sub" }, s.name)),
    el("td", { dataset: { label: "Base" } }, shortName(s.checkpoint)),
    el("td", { dataset: { label: "Ranks" } }, perTable(s.tables, "rank")),
    el("td", { dataset: { label: "Folded rows" } }, perTable(s.tables, "rows")),
    el("td", { dataset: { label: "AUC then" } }, fmt.auc(s.auc)),
    el("td", {}, restoreButton(node, s.name, { text: "Restore", restorable: s.restorable }))));
  box.replaceChildren(
    rows.length ? el("table", { class: "responsive compact", id: "snapshots-table" },
      el("thead", {}, el("tr", {}, ["Taken", "Base", "Ranks", "Folded rows", "AUC then", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)) : el("p", { class: "empty" }, "No snapshots kept on the node yet."),
    el("p", {}, restoreButton(node, "base", { text: "Restore the bare base" })));
  applyRole(box);
}

// Asks the node for its snapshots and shows them (the request is an audited action too).
export async function loadSnapshots(node) {
  const box = document.getElementById("snapshots");
  box.replaceChildren(el("p", { class: "empty" }, "Asking the node…"));
  const record = await send(node, "list_snapshots");
  const answer = record ? await outcome(record.id) : null;
  if (!answer || answer.state !== "succeeded") {
    box.replaceChildren(el("p", { class: "error" }, `The node did not list its snapshots: ${answer ? answer.error : "not sent"}`));
    return;
  }
  render(node, answer.result);
}

// Not on page load: every listing is a recorded action, and opening a node page should not add
// one to the node's history each time.
export function startSnapshots(node) {
  const ask = document.getElementById("snapshots-refresh");
  ask.addEventListener("click", async () => {
    await loadSnapshots(node);
    ask.textContent = "Ask the node again";
  });
  ask.disabled = false; // enabled once it works (a click before this would be lost)
}
