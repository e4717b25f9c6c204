// The "data is stale" banner of every logged-in page: shown when the live socket has been down
// for more than a few seconds, or when the newest API request got no answer (network error or a
// 5xx); hidden again when both recover. Texts marked data-ago (Unix seconds) keep counting.
import { fmt } from "./format.js";

const STALE_MS = 5000;
let socketDownSince = Date.now(); // connecting counts as down until the socket opens
let fetchProblem = "";

function render() {
  const banner = document.getElementById("stale-banner");
  if (!banner) return;
  const down = socketDownSince === null ? 0 : Date.now() - socketDownSince;
  const reasons = [];
  if (down > STALE_MS) reasons.push(`the live connection has been down for ${Math.round(down / 1000)} s (reconnecting)`);
  if (fetchProblem) reasons.push(`the control plane did not answer (${fetchProblem})`);
  banner.hidden = !reasons.length;
  banner.textContent = reasons.length
    ? `Data may be stale: ${reasons.join("; ")}. What you see is the last data received.` : "";
}

export function socketUp() { socketDownSince = null; render(); }
export function socketDown() { if (socketDownSince === null) socketDownSince = Date.now(); render(); }

// Every API reply: status 0 is a network error; a 5xx is the plane failing.
export function fetchDone(status, detail) {
  fetchProblem = status === 0 || status >= 500 ? detail || `HTTP ${status}` : "";
  render();
}

function tick() {
  render();
  document.querySelectorAll("[data-ago]").forEach((node) => {
    const t = Number(node.dataset.ago);
    if (node.dataset.ago !== "" && Number.isFinite(t)) node.textContent = fmt.ago(t);
  });
}
setInterval(tick, 1000);
