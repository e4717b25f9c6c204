// Plotly settings shared by every chart (Plotly itself is the page's classic <script>).

// Readable fonts, legend above, time axis in local time.
export function layout(yTitle, extra = {}) {
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

export const plotConfig = {
  responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"],
};

// Plotly for a page that needs it only sometimes (the fleet page's A/B card): the script named by
// the page's <meta name="plotly-src">, loaded on first use, so the fleet table never waits for it.
let plotlyLoading = null;
export function loadPlotly() {
  if (globalThis.Plotly) return Promise.resolve();
  plotlyLoading = plotlyLoading || new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = document.querySelector("meta[name=plotly-src]").content;
    script.onload = resolve;
    script.onerror = () => reject(new Error("could not load the charting library"));
    document.head.append(script);
  });
  return plotlyLoading;
}
