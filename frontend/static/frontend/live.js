// Opens the dashboard websocket and reconnects with backoff; pages subscribe with onFleetEvent().
(function () {
  const listeners = [];
  const stateEl = () => document.getElementById("ws-state");
  function setState(state, text) {
    const el = stateEl();
    if (el) { el.dataset.state = state; el.textContent = text; }
  }
  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/fleet/`);
    ws.onopen = () => { delay = 500; setState("open", "live"); window.liveSocket = ws; };
    ws.onmessage = (msg) => {
      const event = JSON.parse(msg.data);
      listeners.forEach((fn) => fn(event));
    };
    ws.onclose = () => {
      setState("closed", "reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  window.onFleetEvent = (fn) => listeners.push(fn);
  connect();
})();
