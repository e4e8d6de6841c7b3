// Rejections per filter and source: how many of a pool's documents each filter (a dedup, a
// decontamination, a quality filter, any selection) rejects, per source, and how many survive them
// all (GET /v1/manifests/{id}/rejections), as a table and grouped bars. Shown for a selection or an
// export built with `restrict`, and for a cleaning manifest itself.
import { api } from "./api.js";
import { bars, chartBox, COLORS } from "./charts.js";
import { errorBox, fmtNum, h, link, pct, section, setContent } from "./dom.js";

const TITLE = "Rejections per filter and source";
const NONE = "(none)";
const POOL = "#cbd5e1", SURVIVE = "#059669";

// A filter's rejections of one source: all it rejects, and how many of them it rejects first
// (the others an earlier filter in the list had already rejected).
function rejectedCell(rejected, excluded) {
  return [fmtNum(rejected), rejected !== excluded ? h("span", { class: "muted small" }, ` (${fmtNum(excluded)} first)`) : null];
}

// `restrict`: the filters (default: what the manifest was built on, else itself); `selectedOnly`:
// the pool is the manifest's selected documents (an export's).
export async function rejectionsSection(el, manifestId, { restrict = [], selectedOnly = false, signal } = {}) {
  const q = new URLSearchParams(restrict.map((m) => ["restrict", m]));
  if (selectedOnly) q.set("selected_only", "true");
  let r;
  try {
    r = await api(`/v1/manifests/${manifestId}/rejections?${q}`, { signal });
  } catch (e) {
    if (e.name !== "AbortError") setContent(el, section(TITLE, errorBox(e)));
    return;
  }
  const { filters, by_source: rows } = r;
  // The manifest's own selection is a column of its own unless it is the filter (a cleaning manifest).
  const ownSelection = !r.selected_only && filters.every((f) => f.manifest_id !== r.manifest_id);
  const name = (s) => (s === null ? NONE : s);
  const total = { source: "all sources", pool: r.pool, selected: r.selected, survivors: r.survivors,
                  rejected: Object.fromEntries(filters.map((f) => [f.manifest_id, f.rejected])),
                  excluded: Object.fromEntries(filters.map((f) => [f.manifest_id, f.excluded])) };
  const row = (s, attrs) => h("tr", attrs, h("td", {}, s.source === null ? h("span", { class: "muted" }, NONE) : s.source),
    h("td", { class: "num" }, fmtNum(s.pool)),
    filters.map((f) => h("td", { class: "num", "data-filter": f.manifest_id }, rejectedCell(s.rejected[f.manifest_id], s.excluded[f.manifest_id]))),
    h("td", { class: "num" }, h("strong", {}, fmtNum(s.survivors)), h("span", { class: "muted small" }, ` ${s.pool ? pct(s.survivors / s.pool) : ""}`)),
    ownSelection ? h("td", { class: "num" }, fmtNum(s.selected)) : null);
  const grid = h("table", { class: "grid compact", id: "rejections-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "source"), h("th", { class: "num" }, selectedOnly ? "pool (selected)" : "pool"),
      filters.map((f, i) => h("th", { class: "num", "data-filter": f.manifest_id }, `rejected by ${i + 1}. ${f.kind}`)),
      h("th", { class: "num" }, "survive all"), ownSelection ? h("th", { class: "num" }, "selected") : null)),
    h("tbody", {}, rows.map((s) => row(s, { "data-source": name(s.source) })), row(total, { class: "total", "data-source": "" })));
  const box = chartBox("chart-rejections", 300);
  box.style.marginTop = "14px";
  setContent(el, section(TITLE,
    h("p", { id: "rejections-headline" }, h("strong", {}, fmtNum(r.survivors)), ` of ${fmtNum(r.pool)} documents survive `,
      filters.length === 1 ? "the filter" : `all ${filters.length} filters`, r.pool ? ` (${pct(r.survivors / r.pool)})` : "",
      ownSelection ? `; ${fmtNum(r.selected)} selected from them.` : "."),
    h("ol", { class: "small", id: "rejections-filters" }, filters.map((f) => h("li", { "data-filter": f.manifest_id },
      `${f.kind} `, link(`#/manifests/${f.manifest_id}`, f.manifest_id, { class: "mono" }),
      f.job_id ? [" (job ", link(`#/jobs/${f.job_id}`, f.job_id, { class: "mono" }), ")"] : null,
      `: rejects ${fmtNum(f.rejected)}, ${fmtNum(f.excluded)} of them first`))),
    h("p", { class: "muted small" }, "A document a filter does not select is rejected by it; \"first\" counts the ones no earlier " +
      "filter in the list rejected, so the firsts and the survivors add up to the pool."),
    h("div", { class: "scroll" }, grid), box));
  bars(box.querySelector("canvas"), rows.map((s) => name(s.source)), [
    { label: "pool", data: rows.map((s) => s.pool), color: POOL },
    ...filters.map((f, i) => ({ label: `rejected by ${f.kind}`, data: rows.map((s) => s.rejected[f.manifest_id]), color: COLORS[[1, 3, 4, 6, 5, 7, 0][i % 7]] })),
    { label: "survive all", data: rows.map((s) => s.survivors), color: SURVIVE },
  ], { yTitle: "documents" });
  box.dataset.sources = rows.length;
}
