// The dashboard's websocket (/ws/fleet/): opened when this module is first imported, reconnected
// with backoff. Pages subscribe with onFleetEvent(); a node page calls watchNodes([...]) to get
// those nodes' events only (re-sent on reconnect); onFleetReconnect(fn) lets a page reload what
// it may have missed while the socket was down, or when the server says events were dropped on
// the way ({"kind": "resync"}).
import { socketDown, socketUp } from "./stale.js";

const listeners = [];
const reconnectListeners = [];
let watched = [];
let everOpen = false;
let delay = 500;
let socket = null;
let openedAt = 0;

function setState(state, text) {
  const badge = document.getElementById("ws-state");
  if (badge) { badge.dataset.state = state; badge.textContent = text; }
}

function sendWatch() {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  watched.forEach((node) => socket.send(JSON.stringify({ action: "watch_node", node })));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/fleet/`);
  socket = ws;
  ws.onopen = () => {
    openedAt = Date.now();
    setState("open", "live");
    socketUp();
    sendWatch();
    if (everOpen) reconnectListeners.forEach((fn) => fn());
    everOpen = true;
  };
  ws.onmessage = (msg) => {
    const event = JSON.parse(msg.data);
    if (event.kind === "resync") { reconnectListeners.forEach((fn) => fn()); return; }
    listeners.forEach((fn) => fn(event));
  };
  ws.onclose = () => {
    setState("closed", "reconnecting…");
    socketDown();
    // Back off unless the socket had stayed up for a while (a server that accepts and then
    // drops every socket must not be hammered, nor the API reloaded in a loop).
    if (openedAt && Date.now() - openedAt > 10000) delay = 500;
    openedAt = 0;
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 10000);
  };
}

export const onFleetEvent = (fn) => { listeners.push(fn); };
export const onFleetReconnect = (fn) => { reconnectListeners.push(fn); };

export function watchNodes(nodes) {
  const next = [...new Set(nodes)];
  if (socket && socket.readyState === WebSocket.OPEN) {
    watched.filter((n) => !next.includes(n)).forEach((node) =>
      socket.send(JSON.stringify({ action: "unwatch_node", node })));
  }
  watched = next;
  sendWatch();
}

connect();
