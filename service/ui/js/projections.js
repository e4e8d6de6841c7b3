// A projection: the metric against size for the optimum, the uniform mixture and each single
// source (drawn from /predict), pilots marked; the purchase plan; sliders that ask /predict live.
import { api, query } from "./api.js";
import { chartBox, COLORS, getChart, lines } from "./charts.js";
import { badge, errorBox, fmtNum, fmtTime, h, kv, link, pct, section, setContent, table } from "./dom.js";

const POINTS = 40;

export async function listPage(el, { signal }) {
  const page = await api("/v1/jobs?kind=projection&limit=200", { signal });
  const opt = (j) => (j.result && j.result.summary && j.result.summary.optimum) || null;
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "Projections"), h("a", { class: "button", href: "#/jobs/new/projection" }, "New projection")),
    section("All projections", table([
      { label: "projection", value: (j) => (j.state === "succeeded" ? link(`#/projections/${j.id}`, j.id, { class: "mono" })
                                                                  : link(`#/jobs/${j.id}`, j.id, { class: "mono" })) },
      { label: "name", value: (j) => j.name || "" },
      { label: "state", value: (j) => badge(j.state) },
      { label: "sources", value: (j) => ((j.spec && j.spec.sources) || []).length, cls: "num" },
      { label: "optimum size", value: (j) => fmtNum(opt(j) && opt(j).size), cls: "num" },
      { label: "projected", value: (j) => fmtNum(opt(j) && opt(j).predicted, 5), cls: "num" },
      { label: "created", value: (j) => fmtTime(j.created_at) },
    ], page.items, { id: "projections-table", rowAttrs: (j) => ({ "data-job-id": j.id }), empty: "No projections yet." })));
}

function geomspace(lo, hi, n) {
  const a = Math.log(lo), b = Math.log(hi);
  return Array.from({ length: n }, (_, i) => Math.round(Math.exp(a + (b - a) * i / (n - 1))));
}

export async function projectionPage(el, jobId, { signal }) {
  const job = await api(`/v1/jobs/${jobId}`, { signal });
  if (job.kind !== "projection") throw new Error(`job ${jobId} is a ${job.kind} job, not a projection`);
  if (job.state !== "succeeded") {
    setContent(el, h("div", { class: "card" }, h("h1", {}, "Projection not ready"),
      h("p", {}, `Job ${jobId} is ${job.state}. `, link(`#/jobs/${jobId}`, "Follow it"), ".")));
    return;
  }
  const spec = job.spec, s = job.result.summary;
  const names = await Promise.all(spec.sources.map((src) =>
    api(`/v1/corpora/${src.corpus}`, { signal }).then((c) => c.name).catch(() => src.corpus)));
  const m = names.length;
  const metric = s.metric || spec.metric || "loss";
  const opt = s.optimum;
  const grid = geomspace(Math.min(...spec.pilot_sizes), Math.max(...spec.target_sizes, opt.size) * 1.05, POINTS);
  const uniform = Array(m).fill(1 / m);
  const labelled = [["optimum", opt.mixture], ["uniform", uniform],
                    ...names.map((n, i) => [`only ${n}`, Array.from({ length: m }, (_, j) => (i === j ? 1 : 0))])];
  // Each line ends where its mixture can no longer be bought: predicted there too, to end exactly.
  const caps = labelled.map(([, mix]) => affordable(mix, spec));
  const sizes = [...new Set([...grid, ...caps.filter((c) => c >= grid[0] && c <= grid[grid.length - 1])])].sort((a, b) => a - b);
  const [{ predictions }, pilots] = await Promise.all([
    api(`/v1/projections/${jobId}/predict`, { method: "POST", json: { mixtures: labelled.map((x) => x[1]), sizes }, signal }),
    query("SELECT size, measured FROM m WHERE label = 'pilot' AND measured IS NOT NULL", { m: job.result.manifest_id }, 10000)]);
  const series = labelled.map(([label], k) => ({
    label, ...clipped(sizes.map((n, i) => ({ x: n, y: predictions[k * sizes.length + i].predicted })), caps[k], grid),
    color: k === 0 ? "#0f172a" : COLORS[(k - 1) % COLORS.length], width: k === 0 ? 3 : 1.5, dash: k === 1 ? [6, 4] : undefined }));
  series.push({ label: "pilots (measured)", points: pilots.rows.map(([x, y]) => ({ x, y })), points_only: true, color: "#dc2626" });
  series.push({ label: "the plan", points: [{ x: opt.size, y: opt.predicted }], points_only: true, radius: 9,
                pointStyle: "star", color: "#0f172a", width: 2 });

  const chart = chartBox("chart-projection", 380);
  const sliders = h("div", { class: "sliders", id: "sliders" });
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "Projection ", h("span", { class: "mono" }, jobId)),
      link(`#/jobs/${jobId}`, "job"), link(`#/manifests/${job.result.manifest_id}`, "predictions manifest")),
    section(`Projected validation ${metric} against size`, chart,
      h("p", { class: "muted small", id: "projection-caption" },
        `Star: the plan, ${fmtNum(opt.size)} documents at projected ${metric} ${fmtNum(opt.predicted, 5)} (dotted line: its size). `,
        "Each line stops (×) where its mixture would need more documents of a source than it has",
        spec.budget !== null && spec.budget !== undefined ? ` or cost more than the budget (${fmtNum(spec.budget)})` : "",
        ": no larger purchase of it exists. Red points: measured pilots.")),
    h("div", { class: "two" },
      section("Purchase plan", planTable(spec, s, names, metric)),
      section("Try a mixture", sliders)),
    section("Fit", fitTable(s), s.warnings && s.warnings.length
      ? h("ul", { class: "warnings" }, s.warnings.map((w) => h("li", {}, w))) : null));
  const canvas = chart.querySelector("canvas");
  lines(canvas, series, { xTitle: "documents (N, log scale)", yTitle: `projected ${metric}`,
                          marker: { x: opt.size, label: "optimum size", color: "#64748b", dash: [2, 3] } });
  buildSliders(sliders, jobId, spec, names, opt, canvas, grid, signal);
}

// The most documents a mixture can be bought at: no source beyond its available documents, no
// more than the budget buys.
export function affordable(mix, spec) {
  let n = Infinity;
  mix.forEach((w, j) => { if (w > 0) n = Math.min(n, spec.sources[j].available_docs / w); });
  const price = mix.reduce((a, w, j) => a + w * spec.sources[j].price_per_doc, 0);
  if (spec.budget !== null && spec.budget !== undefined && price > 0) n = Math.min(n, spec.budget / price);
  return Math.floor(n * (1 + 1e-9));
}

// The points of a line up to `cap`, the last one marked (×) when the line stops inside the axis.
function clipped(points, cap, grid) {
  const kept = points.filter((p) => p.x <= cap);
  const stops = cap < grid[grid.length - 1] && kept.length > 0;
  return { points: kept, radius: stops ? kept.map((_, i) => (i === kept.length - 1 ? 6 : 0)) : 0, pointStyle: "crossRot",
           stopsAt: stops ? cap : null };
}

function planTable(spec, s, names, metric) {
  const opt = s.optimum;
  const rows = spec.sources.map((src, i) => ({ i, name: names[i], src, w: opt.mixture[i], docs: opt.docs_per_source[i] }));
  const best = s.baselines && s.baselines.best_single_source;
  return h("div", {},
    table([
      { label: "source", value: (r) => h("span", {}, r.name, h("div", { class: "mono small muted" }, r.src.corpus)) },
      { label: "share", value: (r) => pct(r.w), cls: "num" },
      { label: "documents to buy", value: (r) => fmtNum(r.docs), cls: "num" },
      { label: "price / doc", value: (r) => fmtNum(r.src.price_per_doc), cls: "num" },
      { label: "available", value: (r) => fmtNum(r.src.available_docs), cls: "num" },
      { label: "cost", value: (r) => fmtNum(r.docs * r.src.price_per_doc), cls: "num" },
    ], rows, { id: "plan-table" }),
    kv([
      ["size", fmtNum(opt.size)], ["total cost", `${fmtNum(opt.cost)}${spec.budget ? ` of budget ${fmtNum(spec.budget)}` : ""}`],
      [`projected ${metric}`, h("strong", { id: "optimum-predicted" }, fmtNum(opt.predicted, 5))],
      ["uniform mixture", s.baselines && s.baselines.uniform ? fmtNum(s.baselines.uniform.predicted, 5) : "—"],
      ["best single source", best ? `${fmtNum(best.predicted, 5)} (${names[spec.sources.findIndex((x) => x.corpus === best.source)] || best.source})` : "—"],
    ]));
}

function fitTable(s) {
  const rows = Object.entries(s.fit || {}).map(([n, f]) => ({ n, ...f }));
  return table([
    { label: "pilot size", value: (r) => fmtNum(Number(r.n)), cls: "num" },
    { label: "pilots", value: (r) => r.num_pilots, cls: "num" },
    { label: "r²", value: (r) => fmtNum(r.r2, 4), cls: "num" },
    { label: "leave-one-out MAE", value: (r) => fmtNum(r.loo_mae, 4), cls: "num" },
    { label: "r² without OT", value: (r) => fmtNum(r.no_ot && r.no_ot.r2, 4), cls: "num" },
    { label: "MAE without OT", value: (r) => fmtNum(r.no_ot && r.no_ot.loo_mae, 4), cls: "num" },
  ], rows);
}

function buildSliders(box, jobId, spec, names, opt, canvas, sizes, signal) {
  const ranges = names.map((n, i) => h("input", { type: "range", min: 0, max: 100, step: 1, id: `slider-${i}`,
                                                 value: Math.round(100 * opt.mixture[i]), "aria-label": `weight of ${n}` }));
  const shares = names.map((_, i) => h("span", { class: "share", id: `share-${i}` }));
  const size = h("input", { type: "number", id: "mix-size", min: 1, step: 1, value: opt.size });
  const value = h("strong", { id: "mix-predicted" }, "…");
  const err = h("div");
  setContent(box,
    h("p", { class: "muted small" }, "Weights are normalised to sum to 1; the projection answers as you move them."),
    names.map((n, i) => h("div", { class: "slider-row" }, h("label", { for: `slider-${i}` }, n), ranges[i], shares[i])),
    h("div", { class: "slider-row" }, h("label", { for: "mix-size" }, "documents"), size),
    h("p", { class: "big" }, "projected: ", value), err);

  let seq = 0, timer = null;
  const mixture = () => {
    const v = ranges.map((r) => Number(r.value));
    const total = v.reduce((a, b) => a + b, 0);
    return total > 0 ? v.map((x) => x / total) : v.map(() => 1 / v.length);
  };
  const update = async () => {
    const mix = mixture();
    const n = Math.max(1, Math.round(Number(size.value) || opt.size));
    mix.forEach((w, i) => { shares[i].textContent = pct(w); });
    const mine = ++seq;
    value.classList.add("pending");
    try {
      const { predictions } = await api(`/v1/projections/${jobId}/predict`,
        { method: "POST", json: { mixtures: [mix], sizes: [n, ...sizes] }, signal });
      if (mine !== seq) return;  // a newer request is under way
      value.textContent = fmtNum(predictions[0].predicted, 6);
      value.dataset.value = String(predictions[0].predicted);
      value.dataset.mixture = JSON.stringify(mix);
      value.dataset.size = String(n);
      value.classList.remove("pending");
      err.replaceChildren();
      const chart = getChart(canvas);
      const points = predictions.slice(1).map((p) => ({ x: p.size, y: p.predicted })).filter((p) => p.x <= affordable(mix, spec));
      let ds = chart.data.datasets.find((d) => d.label === "your mixture");
      if (!ds) {
        ds = { label: "your mixture", showLine: true, pointRadius: 0, borderColor: "#f59e0b", backgroundColor: "#f59e0b",
               borderWidth: 2.5, borderDash: [2, 2] };
        chart.data.datasets.push(ds);
      }
      ds.data = points;
      chart.update("none");
    } catch (e) {
      if (e.name !== "AbortError" && mine === seq) err.replaceChildren(errorBox(e));
    }
  };
  const soon = () => { clearTimeout(timer); timer = setTimeout(update, 120); };
  for (const r of ranges) r.addEventListener("input", soon);
  size.addEventListener("input", soon);
  update();
}
