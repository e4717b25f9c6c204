// Shared helpers of the dashboard pages: the REST client (session cookie + CSRF token), a tiny
// DOM builder, number formatting and Plotly defaults. Exposed as window.LU.
(function () {
  const csrfToken = () => document.querySelector("meta[name=csrf-token]").content;

  // {ok, status, data}: data is the parsed JSON body (field errors on 400), or {detail} text.
  async function api(path, { method = "GET", body, params } = {}) {
    const url = new URL(path, location.origin);
    Object.entries(params || {}).forEach(([k, v]) => {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    });
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, status: 0, data: { detail: `network error: ${err.message}` } };
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 300) }; }
    }
    return { ok: response.ok, status: response.status, data };
  }

  // Every page of a paginated list endpoint.
  async function listAll(path, params) {
    const out = [];
    let res = await api(path, { params: { limit: 200, ...params } });
    while (res.ok) {
      out.push(...(res.data.results || res.data));
      if (!res.data.next) return out;
      res = await api(res.data.next);
    }
    throw new Error(`${path}: ${res.status} ${JSON.stringify(res.data)}`);
  }

  function el(tag, attrs = {}, ...children) {
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

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = {
    num: (v, digits = 2) => (isNum(v) ? v.toFixed(digits) : "–"),
    auc: (v) => (isNum(v) ? v.toFixed(4) : "–"),
    ms: (v) => (isNum(v) ? `${v.toFixed(1)} ms` : "–"),
    pct: (v, digits = 2) => (isNum(v) ? `${v.toFixed(digits)} %` : "–"),
    secs: (v) => (isNum(v) ? (v < 120 ? `${v.toFixed(1)} s` : `${(v / 60).toFixed(1)} min`) : "–"),
    bytes(v) {
      if (!isNum(v)) return "–";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
      return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
    },
    time: (epoch) => (isNum(epoch) ? new Date(epoch * 1000).toLocaleString() : "–"),
    ago(epoch) {
      if (!isNum(epoch)) return "never";
      const s = Math.max(0, Date.now() / 1000 - epoch);
      if (s < 90) return `${Math.round(s)} s ago`;
      if (s < 5400) return `${Math.round(s / 60)} min ago`;
      return `${(s / 3600).toFixed(1)} h ago`;
    },
  };
  const epoch = (iso) => (iso ? Date.parse(iso) / 1000 : null);

  // Field errors from a DRF 400 reply: {field: [messages]} -> {field: "message message"}.
  function fieldErrors(data) {
    const out = {};
    if (!data || typeof data !== "object") return { non_field_errors: String(data) };
    Object.entries(data).forEach(([k, v]) => {
      out[k] = Array.isArray(v) ? v.join(" ") : typeof v === "object" ? JSON.stringify(v) : v;
    });
    return out;
  }
  const errorText = (res) =>
    Object.entries(fieldErrors(res.data)).map(([k, v]) =>
      k === "detail" || k === "non_field_errors" ? v : `${k}: ${v}`).join("; ") ||
    `HTTP ${res.status}`;

  // Plotly layout shared by every chart: readable fonts, legend above, time axis in local time.
  function layout(yTitle, extra = {}) {
    return {
      margin: { l: 64, r: 24, t: 28, b: 44 },
      font: { family: "system-ui, sans-serif", size: 12, color: "#1d2330" },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { type: "date", title: { text: "time (local)" }, automargin: true },
      yaxis: { title: { text: yTitle }, automargin: true, rangemode: "tozero" },
      hovermode: "x unified",
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
      ...extra,
    };
  }
  const plotConfig = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  // Resolves true when the operator confirms in the page's <dialog id="confirm-dialog">.
  function confirmAction(title, ...body) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-body").replaceChildren(...body.map((b) =>
      b instanceof Node ? b : el("p", {}, b)));
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  // Controls marked data-needs="operator|admin" are disabled for lower roles (the API would
  // refuse them anyway; this says so before the click). Pages may re-run it after re-rendering.
  const LEVELS = { viewer: 1, operator: 2, admin: 3 };
  const me = api("/api/me/").then((res) => (res.ok ? res.data : { role: null }));
  async function applyRole(root = document) {
    const { role } = await me;
    document.body.dataset.role = role || "none";
    root.querySelectorAll("[data-needs]").forEach((node) => {
      if ((LEVELS[role] || 0) >= LEVELS[node.dataset.needs]) return;
      const controls = node.matches("button, input, select") ? [node] : node.querySelectorAll("button, input, select");
      controls.forEach((c) => { c.disabled = true; });
      node.title = `Needs the ${node.dataset.needs} role (you are ${role || "without a role"}).`;
    });
  }
  document.addEventListener("DOMContentLoaded", () => applyRole());

  window.LU = { api, confirmAction, applyRole, me, listAll, el, fmt, epoch, isNum, fieldErrors, errorText, layout, plotConfig };
})();
