// The node page's chart annotations (annotations.js): loaded with each range, then kept live from
// the websocket's node events and alerts. The page's node gets every annotated kind; its chosen
// baseline gets its delta syncs (when its copy of the model was refreshed, the A/B comparison's
// other half).
import { listAll } from "./api.js";
import { addMarks, alertMarks, eventMark, marksFromApi } from "./annotations.js";

const NODE_KINDS = ["policy", "sync", "rebase", "snapshot"];
const iso = (s) => new Date(s * 1000).toISOString();

// Marks of [start, end] for `node` (and its baseline's syncs), oldest first.
export async function loadMarks(node, baseline, start, end) {
  const within = (n, kind) => ({ node: n, kind, since: iso(start), until: iso(end), limit: 500 });
  const [events, baseSyncs, alerts] = await Promise.all([
    Promise.all(NODE_KINDS.map((kind) => listAll("/api/events/", within(node, kind)))),
    baseline ? listAll("/api/events/", within(baseline, "sync")) : [],
    listAll("/api/alerts/", { node, raised_after: iso(start), limit: 500 }),
  ]);
  const marks = [];
  addMarks(marks, marksFromApi(node, events.flat(), alerts));
  addMarks(marks, marksFromApi(baseline, baseSyncs, []));
  return marks;
}

// A websocket event of `node` or its baseline added to `marks`; whether a mark was added.
export function addLiveMark(marks, event, node, baseline) {
  if (event.kind === "node_event" && event.node === node) {
    return addMarks(marks, [eventMark(node, { kind: event.event, ts: event.ts, detail: event.detail })]);
  }
  if (event.kind === "node_event" && event.node === baseline && event.event === "sync") {
    return addMarks(marks, [eventMark(baseline, { kind: "sync", ts: event.ts, detail: event.detail })]);
  }
  if (event.kind === "alert" && event.node === node) return addMarks(marks, alertMarks(node, event.alert));
  return false;
}
