// DOM helpers of the dashboard pages: a tiny element builder, the confirmation dialog, and
// controls disabled for roles below what they need.
import { me } from "./api.js";

// el("a", {href, class, dataset: {...}, onclick}, ...children): children may be nodes, text,
// nested arrays, or null/undefined/false (skipped).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => {
    if (v === undefined || v === null || v === false) return;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  });
  children.flat(Infinity).forEach((c) => {
    if (c !== undefined && c !== null && c !== false) {
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  });
  return node;
}

// Resolves true when the operator confirms in the page's <dialog id="confirm-dialog">.
export function confirmAction(title, ...body) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").replaceChildren(...body.map((b) =>
    (b instanceof Node ? b : el("p", {}, b))));
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// Controls marked data-needs="operator|admin" are disabled for lower roles (the API would
// refuse them anyway; this says so before the click). Pages re-run it after re-rendering.
const LEVELS = { viewer: 1, operator: 2, admin: 3 };
export async function applyRole(root = document) {
  const { role } = await me();
  document.body.dataset.role = role || "none";
  root.querySelectorAll("[data-needs]").forEach((node) => {
    if ((LEVELS[role] || 0) >= LEVELS[node.dataset.needs]) return;
    const controls = node.matches("button, input, select") ? [node]
      : node.querySelectorAll("button, input, select");
    controls.forEach((c) => { c.disabled = true; });
    node.title = `Needs the ${node.dataset.needs} role (you are ${role || "without a role"}).`;
  });
}
