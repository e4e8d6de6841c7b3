// Manifests: the list, and a manifest's page: per-source bars, the score histogram (with the
// threshold where the selection is a cut on score), CoLoR-Filter's loss scatter, the rejections of
// each filter it was built on (or of a cleaning manifest itself) per source, top and bottom
// documents, a dedup manifest's duplicate clusters with their members side by side, downloads and
// a SQL box.
import { api, download, query } from "./api.js";
import { bars, chartBox, histogram, scatter, COLORS } from "./charts.js";
import { snippet } from "./corpora.js";
import { errorBox, fmtNum, fmtTime, h, kv, link, section, setContent, table } from "./dom.js";
import { rejectionsSection } from "./rejections.js";

const BINS = 30;
const CLEANING = new Set(["dedup", "decontaminate", "quality"]);   // manifests that are filters themselves

export async function listPage(el, { signal }) {
  const page = await api("/v1/manifests?limit=1000", { signal });
  setContent(el, h("div", { class: "page-head" }, h("h1", {}, "Manifests")),
    section("All manifests", table([
      { label: "manifest", value: (m) => link(`#/manifests/${m.id}`, m.id, { class: "mono" }) },
      { label: "kind", value: (m) => m.kind },
      { label: "job", value: (m) => (m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id, { class: "mono" }) : "—") },
      { label: "rows", value: (m) => fmtNum(m.num_rows), cls: "num" },
      { label: "selected", value: (m) => fmtNum(m.num_selected), cls: "num" },
      { label: "created", value: (m) => fmtTime(m.created_at) },
    ], page.items, { id: "manifests-table", rowAttrs: (m) => ({ "data-manifest-id": m.id }), empty: "No manifests yet." })));
}

const sqlNum = (x) => (Number.isFinite(x) ? String(x) : "NULL");
// The axis stops at Tukey's far fences, this many interquartile ranges beyond the quartiles: one
// DSIR document at −5,000 would otherwise squeeze every other document into one bar.
const FENCE = 3;

// Bins of the scores over the axis [lo, hi] (the fences, where documents lie beyond them), the
// documents left and right of it, and whether the selection is a cut on score (every selected
// score at least every unselected one): only then is there a threshold to draw.
async function histogramBins(id, hasSelected) {
  const t = { m: id };
  const sel = hasSelected ? ", min(score) FILTER (WHERE selected), max(score) FILTER (WHERE NOT selected)" : "";
  const [[min, max, q1, q3, minSelected = null, maxUnselected = null]] = (await query(
    `SELECT min(score), max(score), quantile_cont(score, 0.25), quantile_cont(score, 0.75)${sel} FROM m WHERE isfinite(score)`, t)).rows;
  if (min === null) return { bins: [], threshold: null, cut: false, below: 0, above: 0 };
  const iqr = q3 - q1;
  const lo = iqr > 0 ? Math.max(min, q1 - FENCE * iqr) : min;
  const hi = iqr > 0 ? Math.min(max, q3 + FENCE * iqr) : max;
  const width = hi > lo ? (hi - lo) / BINS : 1;
  const [[below, above]] = (await query(
    `SELECT count(*) FILTER (WHERE score < ${sqlNum(lo)}), count(*) FILTER (WHERE score > ${sqlNum(hi)}) FROM m WHERE isfinite(score)`, t)).rows;
  const counts = (await query(
    `SELECT least(greatest(floor((score - ${sqlNum(lo)}) / ${sqlNum(width)}), 0), ${BINS - 1})::INT AS b, count(*)` +
    (hasSelected ? ", count(*) FILTER (WHERE selected)" : "") +
    ` FROM m WHERE isfinite(score) AND score BETWEEN ${sqlNum(lo)} AND ${sqlNum(hi)} GROUP BY 1 ORDER BY 1`, t)).rows;
  const n = hi > lo ? BINS : 1;
  const bins = Array.from({ length: n }, (_, i) => ({ lo: lo + i * width, hi: lo + (i + 1) * width, pool: 0,
                                                     selected: hasSelected ? 0 : undefined }));
  for (const [b, c, s] of counts) { bins[b].pool = c; if (hasSelected) bins[b].selected = s; }
  const cut = hasSelected && minSelected !== null && (maxUnselected === null || maxUnselected <= minSelected);
  return { bins, threshold: cut ? minSelected : null, cut, below, above, lo, hi, min, max };
}

// Why the selected documents are no cut on score, in the words of the job that selected them.
async function whyNoThreshold(jobId, signal) {
  let spec = {}, kind = "";
  try { ({ spec, kind } = await api(`/v1/jobs/${jobId}`, { signal })); } catch { /* the job is gone */ }
  if (kind === "dsir" && spec.sampling === "gumbel") {
    return "No threshold line: DSIR sampled its selection (sampling = gumbel, importance resampling: a document's " +
           "chance grows with its score), so selected (blue) and unselected scores overlap. sampling = topk cuts at a score.";
  }
  if (kind === "color_filter" && spec.rank_by === "evidence") {
    return "No threshold line: CoLoR-Filter ranked by evidence (the t-statistic of each document's loss reduction), " +
           "not by this score, so selected and unselected scores overlap.";
  }
  if (spec.mode === "per_shard") return "No threshold line: each shard was selected on its own, with its own cut.";
  return "No threshold line: the selected documents are not the highest scores (selected and unselected scores overlap).";
}

function docsTable(items, id) {
  return table([
    { label: "score", value: (d) => fmtNum(d.score), cls: "num" },
    { label: "doc", value: (d) => h("span", { class: "mono" }, d.doc_id) },
    { label: "source", value: (d) => d.source ?? "" },
    { label: "selected", value: (d) => (d.selected === null || d.selected === undefined ? "" : d.selected ? "yes" : "no") },
    { label: "text", value: (d) => (d.text === null ? h("span", { class: "muted" }, "(corpus no longer stored)") : snippet(d.text, 240)), cls: "text" },
  ], items, { id });
}

export function sqlBox(tables, initial) {
  const sql = h("textarea", { id: "sql", rows: 4, spellcheck: "false" }, initial);
  const out = h("div", { id: "sql-result" });
  const run = h("button", { type: "submit", id: "run-sql" }, "Run query");
  const form = h("form", { class: "sql-form" },
    h("p", { class: "muted small" }, "One DuckDB SELECT over ",
      Object.entries(tables).map(([k, v], i) => [i ? ", " : "", h("code", {}, k), " = ", h("span", { class: "mono" }, v)]),
      " (Ctrl+Enter runs it)."),
    sql, h("div", { class: "actions" }, run), out);
  const submit = async () => {
    run.disabled = true;
    out.replaceChildren(h("span", { class: "muted" }, "running…"));
    const t0 = performance.now();
    try {
      const r = await query(sql.value, tables, 500);
      const ms = performance.now() - t0;
      setContent(out,
        h("p", { class: "muted small", id: "sql-meta" }, `${r.rows.length} row${r.rows.length === 1 ? "" : "s"}${r.truncated ? " (truncated at 500)" : ""} in ${ms.toFixed(0)} ms`),
        h("div", { class: "scroll" }, table(r.columns.map((c, i) => ({ label: c.name, value: (row) => cell(row[i]),
                                                                       cls: /INT|DOUBLE|FLOAT|DECIMAL/.test(c.type) ? "num" : "" })),
                                            r.rows, { id: "sql-table", empty: "No rows." })));
    } catch (e) {
      setContent(out, errorBox(e, "Query failed: "));
    } finally {
      run.disabled = false;
    }
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  sql.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); } });
  return form;
}

function cell(v) {
  if (v === null) return h("span", { class: "muted" }, "NULL");
  if (typeof v === "number") return fmtNum(v, 6);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v).length > 200 ? `${String(v).slice(0, 200)}…` : String(v);
}

// -- a dedup manifest's duplicate clusters ----------------------------------------------------------

const MEMBERS = 8;   // members shown side by side
const WORD = /([\p{L}\p{N}']+)/u;

// The text with every word that `vocab` lacks marked.
function marked(text, vocab) {
  return text.split(WORD).map((part, i) => (i % 2 && !vocab.has(part.toLowerCase()) ? h("mark", {}, part) : part));
}

function verdict(d) {
  if (d.kept) return "kept";
  if (d.matched_corpus) return ["dropped: matches ", h("span", { class: "mono" }, d.matched_doc), " in ", link(`#/corpora/${d.matched_corpus}`, d.matched_corpus, { class: "mono" })];
  return d.duplicate_of ? ["dropped: duplicate of ", h("span", { class: "mono" }, d.duplicate_of)] : "dropped";
}

function clusterMembers(items, clusterId) {
  if (!items.length) return h("p", { class: "muted" }, "No members.");
  const ref = items.find((d) => d.kept) || items[0];
  const vocab = new Set((ref.text || "").split(WORD).filter((_, i) => i % 2).map((w) => w.toLowerCase()));
  const size = items[0].cluster_size ?? items.length;
  return [
    h("p", { class: "muted small", id: "cluster-caption" },
      `Cluster ${clusterId}: ${fmtNum(size)} pool document${size === 1 ? "" : "s"}${size > items.length ? `, the first ${items.length} shown` : ""}. ` +
      `Marked: words the ${ref.kept ? "kept" : "first"} document (left) does not have.`),
    h("div", { class: "side-by-side", id: "cluster-members" }, items.map((d) =>
      h("article", { class: `member${d.kept ? " kept" : ""}`, "data-doc-id": d.doc_id, "data-kept": String(!!d.kept) },
        h("header", {}, h("strong", { class: "mono" }, d.doc_id), d.source ? h("span", { class: "muted small" }, d.source) : null,
          h("span", { class: "muted small" }, `${fmtNum(d.num_chars)} characters`)),
        h("div", { class: `verdict${d.kept ? " kept" : ""}` }, verdict(d)),
        h("div", { class: "doc-text" }, d.text === null || d.text === undefined ? h("span", { class: "muted" }, "(corpus no longer stored)")
          : [d === ref ? d.text : marked(d.text, vocab), d.num_chars > d.text.length ? " …" : ""])))),
  ];
}

// Pick a cluster (the largest first, or one by id) and read its members' texts side by side.
async function clustersSection(el, id, signal) {
  const { rows } = await query(
    "SELECT cluster_id, max(cluster_size) AS size, any_value(matched_corpus) AS matched FROM m " +
    "WHERE cluster_size > 1 OR matched_corpus IS NOT NULL GROUP BY cluster_id ORDER BY size DESC, cluster_id LIMIT 200", { m: id }, 200);
  if (!rows.length) {
    setContent(el, section("Duplicate clusters", h("p", { class: "muted", id: "cluster-caption" }, "No duplicates: every document is a cluster of its own.")));
    return;
  }
  const pick = h("select", { id: "cluster-pick" }, rows.map(([c, size, matched]) =>
    h("option", { value: c }, `cluster ${c}: ${fmtNum(size)} document${size === 1 ? "" : "s"}${matched ? `, matches ${matched}` : ""}`)));
  const byId = h("input", { type: "number", id: "cluster-id", min: 0, step: 1, placeholder: "a cluster_id" });
  const out = h("div", { id: "cluster" });
  const show = async (clusterId) => {
    out.replaceChildren(h("span", { class: "muted" }, "loading…"));
    try {
      const { items } = await api(`/v1/manifests/${id}/documents?cluster_id=${clusterId}&n=${MEMBERS}&snippet=4000`, { signal });
      setContent(out, clusterMembers(items, clusterId));
    } catch (e) {
      if (e.name !== "AbortError") setContent(out, errorBox(e));
    }
  };
  const form = h("form", { class: "cluster-pick" }, h("label", { for: "cluster-pick" }, "Largest clusters"), pick,
    h("span", { class: "muted" }, "or by id"), byId, h("button", { type: "submit", id: "show-cluster" }, "Show"));
  pick.addEventListener("change", () => { byId.value = ""; show(pick.value); });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); show(byId.value || pick.value); });
  setContent(el, section(`Duplicate clusters (${rows.length === 200 ? "the 200 largest" : fmtNum(rows.length)})`, form, out));
  await show(rows[0][0]);
}

export async function manifestPage(el, id, { signal }) {
  const m = await api(`/v1/manifests/${id}`, { signal });
  const cols = new Set(m.columns.map((c) => c.name));
  const hasSelected = cols.has("selected");
  const isDocs = cols.has("doc_id") && cols.has("score");
  const selectedOnly = h("input", { type: "checkbox", id: "dl-selected", checked: hasSelected });
  const dlStatus = h("span");
  const dl = (fmt) => h("button", { class: "quiet", onclick: () => download(
    `/v1/manifests/${id}/download?format=${fmt}&selected_only=${selectedOnly.checked}`, `${id}${selectedOnly.checked ? "-selected" : ""}.${fmt}`)
    .catch((e) => dlStatus.replaceChildren(errorBox(e))) }, fmt);

  const projection = m.kind === "projection" && m.job_id;
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "Manifest ", h("span", { class: "mono" }, m.id)), link("#/manifests", "← all manifests")),
    section("Overview", kv([
      ["kind", m.kind], ["job", m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id, { class: "mono" }) : "—"],
      ["rows", fmtNum(m.num_rows)], ["selected", hasSelected ? `${fmtNum(m.num_selected)} (${(100 * m.num_selected / Math.max(1, m.num_rows)).toFixed(1)}%)` : "—"],
      ["shards", fmtNum(m.num_shards)],
      m.built_on.length ? ["built on", h("span", { id: "built-on" }, m.built_on.map((b, i) => [i ? ", " : "", link(`#/manifests/${b}`, b, { class: "mono" })]))] : null,
      ["columns", m.columns.map((c) => `${c.name} ${c.type}`).join(", ")],
      ["created", fmtTime(m.created_at)],
      ["download", h("span", { class: "buttons" }, dl("parquet"), dl("csv"), dl("jsonl"),
        hasSelected ? h("label", { class: "check" }, selectedOnly, " selected only") : null, dlStatus)],
      projection ? ["projection", link(`#/projections/${m.job_id}`, "open the projection", { id: "open-projection" })] : null,
    ].filter(Boolean))),
    h("div", { id: "manifest-charts" }),
    h("div", { id: "manifest-rejections" }),
    h("div", { id: "manifest-clusters" }),
    h("div", { id: "manifest-docs" }),
    section("SQL", sqlBox({ m: m.id }, cols.has("doc_id") && hasSelected && cols.has("source")
      ? "SELECT source, count(*) AS pool, count(*) FILTER (WHERE selected) AS selected\nFROM m GROUP BY source ORDER BY source"
      : "SELECT * FROM m LIMIT 20")));

  const charts = el.querySelector("#manifest-charts");
  const grid = h("div", { class: "two" });
  charts.append(grid);
  if (cols.has("source") && cols.has("doc_id")) {
    const { rows } = await query(`SELECT coalesce(source, '(none)') AS s, count(*)${hasSelected ? ", count(*) FILTER (WHERE selected)" : ""} ` +
                                 "FROM m GROUP BY 1 ORDER BY 1", { m: id });
    const box = chartBox("chart-sources", 300);
    grid.append(section(hasSelected ? "Selected vs pool, per source" : "Documents per source", box));
    const series = [{ label: "pool", data: rows.map((r) => r[1]), color: "#cbd5e1" }];
    if (hasSelected) series.push({ label: "selected", data: rows.map((r) => r[2]), color: COLORS[0] });
    bars(box.querySelector("canvas"), rows.map((r) => r[0]), series, { yTitle: "documents" });
    box.dataset.sources = rows.length;
  }
  if (cols.has("score")) {
    const hist = await histogramBins(id, hasSelected);
    const box = chartBox("chart-histogram", 300);
    const clipped = hist.below || hist.above ? h("p", { class: "muted small", id: "histogram-clipped" },
      `Axis cut at ${FENCE} interquartile ranges beyond the quartiles (${fmtNum(hist.lo, 4)} to ${fmtNum(hist.hi, 4)}); not drawn: `,
      [hist.below ? `${fmtNum(hist.below)} below, down to ${fmtNum(hist.min, 4)}` : null,
       hist.above ? `${fmtNum(hist.above)} above, up to ${fmtNum(hist.max, 4)}` : null].filter(Boolean).join("; "), ".") : null;
    let note = null;
    if (hist.cut) {
      note = h("p", { class: "muted small", id: "threshold" }, `Dashed line: the threshold, the lowest selected score (${fmtNum(hist.threshold, 5)}).`);
    } else if (hasSelected && m.num_selected && m.job_id) {
      note = h("p", { class: "muted small", id: "threshold" }, await whyNoThreshold(m.job_id, signal));
    }
    grid.append(section("Score histogram", box, clipped, note));
    histogram(box.querySelector("canvas"), hist.bins, { threshold: hist.threshold, thresholdLabel: "threshold" });
    Object.assign(box.dataset, { bins: hist.bins.length, below: hist.below, above: hist.above });
  }
  if (cols.has("prior_loss") && cols.has("cond_loss")) {
    const { rows } = await query("SELECT prior_loss, cond_loss, selected FROM m WHERE isfinite(prior_loss) AND isfinite(cond_loss) " +
                                 "ORDER BY hash(doc_id) LIMIT 2000", { m: id }, 2000);
    const box = chartBox("chart-scatter", 340);
    charts.append(section("CoLoR-Filter: prior vs conditional loss (a sample of up to 2000 documents)", box,
      h("p", { class: "muted small" }, "Selected documents gain most from the conditional model (score = prior − conditional loss): furthest below the diagonal.")));
    scatter(box.querySelector("canvas"), [
      { label: "not selected", points: rows.filter((r) => !r[2]).map((r) => ({ x: r[0], y: r[1] })), color: "#cbd5e1" },
      { label: "selected", points: rows.filter((r) => r[2]).map((r) => ({ x: r[0], y: r[1] })), color: COLORS[0] },
    ], { xTitle: "prior loss", yTitle: "conditional loss", diagonal: true });
  }
  if (m.built_on.length || CLEANING.has(m.kind)) await rejectionsSection(el.querySelector("#manifest-rejections"), id, { signal });
  if (cols.has("cluster_id") && cols.has("corpus_id")) await clustersSection(el.querySelector("#manifest-clusters"), id, signal);
  if (isDocs && cols.has("corpus_id")) {
    const docs = el.querySelector("#manifest-docs");
    try {
      const [top, bottom] = await Promise.all([
        api(`/v1/manifests/${id}/documents?order=top&n=8`, { signal }),
        api(`/v1/manifests/${id}/documents?order=bottom&n=8`, { signal })]);
      setContent(docs, section("Top documents by score", docsTable(top.items, "docs-top")),
                       section("Bottom documents by score", docsTable(bottom.items, "docs-bottom")));
    } catch (e) {
      if (e.name !== "AbortError") setContent(docs, errorBox(e));
    }
  }
}
