// Values to text and back: number formatting, the API's field errors as text, the policy form's
// numbers. Pure functions (no DOM, no network), unit-tested in tests/js/.

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);

// An ISO 8601 time from the API as Unix seconds (null stays null).
export const epoch = (iso) => (iso ? Date.parse(iso) / 1000 : null);

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export const fmt = {
  num: (v, digits = 2) => (isNum(v) ? v.toFixed(digits) : "–"),
  auc: (v) => (isNum(v) ? v.toFixed(4) : "–"),
  ms: (v) => (isNum(v) ? `${v.toFixed(1)} ms` : "–"),
  pct: (v, digits = 2) => (isNum(v) ? `${v.toFixed(digits)} %` : "–"),
  secs: (v) => (isNum(v) ? (v < 120 ? `${v.toFixed(1)} s` : `${(v / 60).toFixed(1)} min`) : "–"),
  bytes(v) {
    if (!isNum(v)) return "–";
    let i = 0;
    while (Math.abs(v) >= 1024 && i < BYTE_UNITS.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i ? 1 : 0)} ${BYTE_UNITS[i]}`;
  },
  time: (seconds) => (isNum(seconds) ? new Date(seconds * 1000).toLocaleString() : "–"),
  ago(seconds, now = Date.now() / 1000) {
    if (!isNum(seconds)) return "never";
    const s = Math.max(0, now - seconds);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  },
  // Each table's rank, by table name: "item: 4, user: 6".
  ranks(tables) {
    const names = Object.keys(tables || {}).sort();
    if (!names.length) return "–";
    return names.map((t) => `${t}: ${tables[t].rank}`).join(", ");
  },
  plural: (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`,
};

// The binary unit [name, size] that suits the largest of `values` (bytes), for a chart's axis.
export function byteUnit(values) {
  const top = Math.max(0, ...values.filter(isNum));
  const units = BYTE_UNITS.map((name, i) => [name, 1024 ** i]);
  return units.filter(([, size]) => top >= size).pop() || units[0];
}

// How close a value is to its limit: "bad" over it, "warn" over 80% of it, else "ok"; "" when
// either is unknown. `share` is the part of the limit used, clamped to [0, 1].
export function limitLevel(value, limit) {
  if (!isNum(value) || !isNum(limit)) return "";
  if (value > limit) return "bad";
  return value > 0.8 * limit ? "warn" : "ok";
}
export const limitShare = (value, limit) =>
  (isNum(value) && isNum(limit) && limit > 0 ? Math.min(1, Math.max(0, value / limit)) : 0);

// The API's generic messages in the words of a form (a person typed text, not "null").
const PLAIN = {
  "This field may not be null.": "Required: enter a number.",
  "This field may not be blank.": "Required.",
  "A valid number is required.": "Enter a number.",
  "A valid integer is required.": "Enter a whole number.",
};
export const plainMessage = (m) => PLAIN[m] || m;

// Field errors from a DRF 400 reply: {field: [messages]} -> {field: "message message"}.
export function fieldErrors(data) {
  const out = {};
  if (!data || typeof data !== "object") return { non_field_errors: String(data) };
  Object.entries(data).forEach(([k, v]) => {
    out[k] = Array.isArray(v) ? v.map(plainMessage).join(" ")
      : typeof v === "object" ? JSON.stringify(v) : plainMessage(v);
  });
  return out;
}

// A number field checked as the API will check it, so every field's error shows at once:
// spec is the input's dataset {number: "int"|"float", low, high, lowOpen, nullable} (bounds as
// the server wrote them, so the wording matches the API's). Returns "" when the value is fine.
export function numberFieldError(raw, badInput, spec) {
  const text = raw.trim();
  if (badInput) return "Enter a number.";
  if (text === "") return spec.nullable !== undefined ? "" : "Required: enter a number.";
  const v = Number(text);
  if (!Number.isFinite(v)) return "Enter a number.";
  if (spec.number === "int" && !Number.isInteger(v)) return "Enter a whole number.";
  const low = spec.low === undefined ? null : Number(spec.low);
  const high = spec.high === undefined ? null : Number(spec.high);
  const open = spec.lowOpen !== undefined;
  const tooLow = low !== null && (open ? v <= low : v < low);
  if (tooLow || (high !== null && v > high)) {
    const parts = [low === null ? "" : `${open ? ">" : ">="} ${spec.low}`, high === null ? "" : `<= ${spec.high}`];
    return `Must be ${parts.filter(Boolean).join(" and ")}.`;
  }
  return "";
}

// One line for an API reply that failed: its field errors, or its HTTP status.
export const errorText = (res) =>
  Object.entries(fieldErrors(res.data)).map(([k, v]) =>
    (k === "detail" || k === "non_field_errors" ? v : `${k}: ${v}`)).join("; ") ||
  `HTTP ${res.status}`;

// A number input's value as the API wants it: a number, null when empty, and anything the
// browser could not parse passed through as text so that the API names the field.
export function numberFieldValue(raw, badInput = false) {
  const text = raw.trim();
  if (text === "") return badInput ? "not a number" : null;
  return Number.isFinite(Number(text)) ? Number(text) : text;
}

// Only a liveupdate node trains locally: the others (delta_sync, frozen) have no trainer, ranks or
// LoRA memory to show. A node without a policy runs the default mode, liveupdate.
export const TRAINING_MODE = "liveupdate";
export const modeOf = (policy) => (policy && policy.mode) || TRAINING_MODE;
export const trainsLocally = (policy) => modeOf(policy) === TRAINING_MODE;
export const MODE_TEXT = {
  liveupdate: "LiveUpdate (local LoRA training)",
  delta_sync: "delta sync (rows from the training cluster, no local trainer)",
  frozen: "frozen (no updates)",
};
