// Chart.js (vendored, window.Chart) with the dashboard's defaults, and the charts that need care:
// a histogram with a marked threshold, grouped bars, a scatter, lines on a log axis.

const Chart = window.Chart;
export const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4b5563"];
const POOL = "#cbd5e1";

if (Chart) {
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.font.size = 12;
  Chart.defaults.color = "#334155";
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
}

// A vertical line at x (in data units) with a label: the selection threshold, the optimum's size.
const vline = {
  id: "vline",
  afterDatasetsDraw(chart, _args, opts) {
    if (!opts || opts.x === undefined || opts.x === null) return;
    const { ctx, chartArea, scales } = chart;
    const x = scales.x.getPixelForValue(opts.x);
    if (!(x >= chartArea.left && x <= chartArea.right)) return;
    ctx.save();
    ctx.strokeStyle = opts.color || "#b91c1c";
    ctx.lineWidth = 1.5;
    ctx.setLineDash(opts.dash || [5, 4]);
    ctx.beginPath();
    ctx.moveTo(x, chartArea.top);
    ctx.lineTo(x, chartArea.bottom);
    ctx.stroke();
    if (opts.label) {
      ctx.setLineDash([]);
      ctx.fillStyle = opts.color || "#b91c1c";
      ctx.font = "12px " + Chart.defaults.font.family;
      const w = ctx.measureText(opts.label).width;
      const left = x + 6 + w > chartArea.right ? x - 6 - w : x + 6;
      ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
      ctx.fillRect(left - 3, chartArea.top + 2, w + 6, 16);
      ctx.fillStyle = opts.color || "#b91c1c";
      ctx.fillText(opts.label, left, chartArea.top + 14);
    }
    ctx.restore();
  },
};

function make(canvas, config) {
  const existing = Chart.getChart(canvas);
  if (existing) existing.destroy();
  return new Chart(canvas, config);
}

export function chartBox(id, height = 280) {
  const box = document.createElement("div");
  box.className = "chart";
  box.style.height = `${height}px`;
  const canvas = document.createElement("canvas");
  canvas.id = id;
  box.append(canvas);
  return box;
}

// Grouped bars: labels on x, one dataset per series ({label, data, color}).
export function bars(canvas, labels, series, { yTitle, xTitle, horizontal = false } = {}) {
  return make(canvas, {
    type: "bar",
    data: { labels, datasets: series.map((s, i) => ({ label: s.label, data: s.data,
      backgroundColor: s.color || COLORS[i % COLORS.length], borderRadius: 2 })) },
    options: {
      indexAxis: horizontal ? "y" : "x",
      plugins: { legend: { position: "bottom" } },
      scales: { x: { title: { display: !!xTitle, text: xTitle } },
                y: { beginAtZero: true, title: { display: !!yTitle, text: yTitle } } },
    },
  });
}

// Bars with error bars: one bar per label, `values[i]` ± `errors[i]` (null: no whisker), drawn
// as whiskers over the bars (Chart.js has no error bars of its own).
const whiskers = {
  id: "whiskers",
  afterDatasetsDraw(chart, _args, opts) {
    const errors = (opts && opts.errors) || [];
    const { ctx, scales } = chart;
    const meta = chart.getDatasetMeta(0);
    ctx.save();
    ctx.strokeStyle = "#0f172a";
    ctx.lineWidth = 1.5;
    meta.data.forEach((bar, i) => {
      const v = chart.data.datasets[0].data[i], e = errors[i];
      if (v === null || v === undefined || e === null || e === undefined) return;
      const top = scales.y.getPixelForValue(v + e), bottom = scales.y.getPixelForValue(v - e);
      const w = Math.min(12, bar.width / 4);
      ctx.beginPath();
      ctx.moveTo(bar.x, top); ctx.lineTo(bar.x, bottom);
      ctx.moveTo(bar.x - w, top); ctx.lineTo(bar.x + w, top);
      ctx.moveTo(bar.x - w, bottom); ctx.lineTo(bar.x + w, bottom);
      ctx.stroke();
    });
    ctx.restore();
  },
};

export function errorBars(canvas, labels, values, errors, { yTitle, colors } = {}) {
  // The axis holds every whisker, not only the bars.
  const ends = values.flatMap((v, i) => (v === null ? [] : [v - (errors[i] || 0), v + (errors[i] || 0)]));
  const pad = 0.1 * (Math.max(0, ...ends) - Math.min(0, ...ends) || 1);
  return make(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label: yTitle, data: values, borderRadius: 2,
      backgroundColor: colors || labels.map((_, i) => COLORS[i % COLORS.length]) }] },
    options: {
      plugins: { legend: { display: false }, whiskers: { errors },
                 tooltip: { callbacks: { label: (item) => `${item.formattedValue} ± ${errors[item.dataIndex] ?? "—"}` } } },
      scales: { y: { min: Math.min(0, ...ends) - pad, max: Math.max(0, ...ends) + pad,
                     title: { display: !!yTitle, text: yTitle } } },
    },
    plugins: [whiskers],
  });
}

// A histogram of bins [{lo, hi, pool, selected}] stacked selected-over-rest, threshold marked.
export function histogram(canvas, bins, { threshold, xTitle = "score", thresholdLabel } = {}) {
  const mid = (b) => (b.lo + b.hi) / 2;
  const hasSelected = bins.some((b) => b.selected !== undefined);
  const datasets = hasSelected
    ? [{ label: "selected", data: bins.map((b) => ({ x: mid(b), y: b.selected || null })), backgroundColor: COLORS[0] },
       { label: "not selected", data: bins.map((b) => ({ x: mid(b), y: b.pool - b.selected || null })), backgroundColor: POOL }]
    : [{ label: "documents", data: bins.map((b) => ({ x: mid(b), y: b.pool || null })), backgroundColor: COLORS[0] }];
  // (empty bins are null, not 0: a zero-height bar still leaves a hairline)
  for (const d of datasets) Object.assign(d, { barPercentage: 1, categoryPercentage: 1, borderWidth: 0 });
  return make(canvas, {
    type: "bar",
    data: { datasets },
    options: {
      plugins: {
        legend: { position: "bottom" },
        vline: { x: threshold, label: thresholdLabel },
        tooltip: { callbacks: { title: (items) => {
          const b = bins[items[0].dataIndex];
          return `${b.lo.toPrecision(4)} … ${b.hi.toPrecision(4)}`;
        } } },
      },
      scales: {
        x: { type: "linear", stacked: true, offset: false, title: { display: true, text: xTitle },
             min: bins.length ? bins[0].lo : 0, max: bins.length ? bins[bins.length - 1].hi : 1,
             ticks: { maxTicksLimit: 10, includeBounds: false } },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "documents" } },
      },
      datasets: { bar: { barThickness: "flex" } },
    },
    plugins: [vline],
  });
}

export function scatter(canvas, groups, { xTitle, yTitle, diagonal = false } = {}) {
  const datasets = groups.map((g, i) => ({ label: g.label, data: g.points, pointRadius: 2.5,
    backgroundColor: g.color || COLORS[i % COLORS.length] }));
  if (diagonal) {
    const all = groups.flatMap((g) => g.points);
    // Only where the x and y ranges overlap, so the line never stretches the axes.
    const lo = Math.max(Math.min(...all.map((p) => p.x)), Math.min(...all.map((p) => p.y)));
    const hi = Math.min(Math.max(...all.map((p) => p.x)), Math.max(...all.map((p) => p.y)));
    if (all.length && lo < hi) datasets.push({ label: "x = y", data: [{ x: lo, y: lo }, { x: hi, y: hi }], showLine: true, pointRadius: 0,
                    borderColor: "#94a3b8", borderDash: [4, 4], borderWidth: 1 });
  }
  return make(canvas, {
    type: "scatter",
    data: { datasets },
    options: { plugins: { legend: { position: "bottom" } },
               scales: { x: { title: { display: true, text: xTitle } }, y: { title: { display: true, text: yTitle } } } },
  });
}

// Lines over a (log) x axis, plus scatter series; `marker` draws a vertical line. A series'
// `radius` (a number, or one per point) and `pointStyle` mark points on a line.
export function lines(canvas, series, { xTitle, yTitle, logX = true, marker } = {}) {
  return make(canvas, {
    type: "scatter",
    data: { datasets: series.map((s, i) => ({
      label: s.label, data: s.points, showLine: !s.points_only, pointRadius: s.radius ?? (s.points_only ? 4 : 0),
      borderColor: s.color || COLORS[i % COLORS.length], backgroundColor: s.color || COLORS[i % COLORS.length],
      borderWidth: s.width || 1.5, borderDash: s.dash, pointStyle: s.pointStyle || "circle", stopsAt: s.stopsAt })) },
    options: {
      plugins: { legend: { position: "bottom" }, vline: marker || {} },
      scales: { x: { type: logX ? "logarithmic" : "linear", title: { display: true, text: xTitle },
                     ticks: logX ? { autoSkip: false, callback: logTick } : {} },
                y: { title: { display: true, text: yTitle } } },
    },
    plugins: [vline],
  });
}

// On a log axis, label only 1, 2 and 5 times a power of ten.
function logTick(value) {
  const lead = value / 10 ** Math.floor(Math.log10(value) + 1e-9);
  return [1, 2, 5].some((d) => Math.abs(lead - d) < 1e-6) ? Number(value).toLocaleString("en-US") : "";
}

export const getChart = (canvas) => Chart.getChart(canvas);
