// The A/B readout: LiveUpdate's AUC lead over its baseline node, as a number with a 95 %
// interval, from the two nodes' telemetry over a range. Pure functions (no DOM, no network),
// unit-tested in tests/js/.
import { isNum } from "./format.js";

// Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96).
const T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
  2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056,
  2.052, 2.048, 2.045, 2.042];
export const t95 = (df) => (df >= 1 && df <= 30 ? T95[df - 1] : 1.96);

// Each point of `a` ({t, y}, times ascending) paired with the point of `b` nearest in time, when
// it is at most `tolerance` seconds away and both values are numbers: {t, a, b, gap = a - b}.
export function pairByTime(a, b, tolerance) {
  const out = { t: [], a: [], b: [], gap: [] };
  let j = 0;
  a.t.forEach((t, i) => {
    while (j + 1 < b.t.length && Math.abs(b.t[j + 1] - t) <= Math.abs(b.t[j] - t)) j += 1;
    if (!b.t.length || Math.abs(b.t[j] - t) > tolerance) return;
    if (!isNum(a.y[i]) || !isNum(b.y[j])) return;
    out.t.push(t);
    out.a.push(a.y[i]);
    out.b.push(b.y[j]);
    out.gap.push(a.y[i] - b.y[j]);
  });
  return out;
}

// Mean of `values` with a 95 % interval from batch means: the series is cut into `batches`
// contiguous stretches and the interval is Student's t over the stretches' means. A windowed
// AUC is strongly autocorrelated from one second to the next, so a per-point interval would be
// far too narrow; stretches much longer than the AUC window are close to independent.
// null below 2 values per stretch for at least 2 stretches.
export function batchMeanInterval(values, batches = 10) {
  const v = values.filter(isNum);
  const k = Math.min(batches, Math.floor(v.length / 2));
  if (k < 2) return null;
  const means = Array.from({ length: k }, (_, i) => {
    const part = v.slice(Math.floor((i * v.length) / k), Math.floor(((i + 1) * v.length) / k));
    return part.reduce((s, x) => s + x, 0) / part.length;
  });
  const mean = v.reduce((s, x) => s + x, 0) / v.length;
  const centre = means.reduce((s, x) => s + x, 0) / k;
  const sd = Math.sqrt(means.reduce((s, x) => s + (x - centre) ** 2, 0) / (k - 1));
  const half = (t95(k - 1) * sd) / Math.sqrt(k);
  return { mean, low: mean - half, high: mean + half, n: v.length, batches: k };
}

const signed = (v, digits = 4) => `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(digits)}`;

// The readout's words: {lead, interval, verdict, level} ("ok" ahead, "bad" behind, "" unclear).
export function leadText(ci) {
  if (!ci) {
    return { lead: "–", interval: "", verdict: "not enough paired AUC samples in this range", level: "" };
  }
  const interval = `95 % interval ${signed(ci.low)} to ${signed(ci.high)}`;
  const lead = `${signed(ci.mean)} AUC`;
  if (ci.low > 0) return { lead, interval, verdict: "ahead", level: "ok" };
  if (ci.high < 0) return { lead, interval, verdict: "behind", level: "bad" };
  return { lead, interval, verdict: "no clear difference", level: "" };
}

// The newest number of a column, and its time: {t, value} (null when there is none).
export function newest(t, values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (isNum(values[i])) return { t: t[i], value: values[i] };
  }
  return null;
}
