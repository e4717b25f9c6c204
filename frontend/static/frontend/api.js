// The REST client of the dashboard pages: the session cookie and the page's CSRF token.
import { fetchDone } from "./stale.js";

const csrfToken = () => document.querySelector("meta[name=csrf-token]").content;

// {ok, status, data}: data is the parsed JSON body (field errors on 400), or {detail} text.
export async function api(path, { method = "GET", body, params } = {}) {
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
    fetchDone(0, `network error: ${err.message}`);
    return { ok: false, status: 0, data: { detail: `network error: ${err.message}` } };
  }
  fetchDone(response.status, `HTTP ${response.status}`);
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 300) }; }
  }
  return { ok: response.ok, status: response.status, data };
}

// Every page of a paginated list endpoint.
export async function listAll(path, params) {
  const out = [];
  let res = await api(path, { params: { limit: 200, ...params } });
  while (res.ok) {
    out.push(...(res.data.results || res.data));
    if (!res.data.next) return out;
    res = await api(res.data.next);
  }
  throw new Error(`${path}: ${res.status} ${JSON.stringify(res.data)}`);
}

let whoAmI = null;
// The logged-in user, {username, role} (role null without one), asked once per page.
export function me() {
  whoAmI = whoAmI || api("/api/me/").then((res) => (res.ok ? res.data : { role: null }));
  return whoAmI;
}
