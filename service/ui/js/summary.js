// A finished job's summary as tables a person reads: a view per kind (evaluate's gain with its
// error, CoLoR-Filter's diagnostics, a selection's counts by source, dedup's clusters and LSH
// parameters, decontamination by corpus and source, quality rejections per preset, rule and
// source), every figure a view leaves out in a generic key/value table, and the raw JSON behind a
// toggle.
import { chartBox, errorBars, lines } from "./charts.js";
import { fmtNum, h, json, link } from "./dom.js";

const PAGES = { cor: "corpora", man: "manifests", mdl: "models", job: "jobs", cur: "curricula" };
const ID = /^(cor|man|mdl|job|cur)_[0-9a-f]{20}$/;

const label = (key) => String(key).replace(/_/g, " ");
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isPlain = (v) => v === null || v === undefined || typeof v !== "object";

// A percentage of a fraction with a sign: 0.0312 -> "+3.12%".
export const signedPct = (x, digits = 2) =>
  (x === null || x === undefined || !Number.isFinite(x) ? "—" : `${x > 0 ? "+" : x < 0 ? "−" : ""}${Math.abs(100 * x).toFixed(digits)}%`);
const pct = (x, digits = 1) => (x === null || x === undefined || !Number.isFinite(x) ? "—" : `${(100 * x).toFixed(digits)}%`);

// One value: ids link to their page, nested objects become sub-tables, lists of rows a table.
export function value(v, depth = 0) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "—");
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "string") {
    const m = v.match(ID);
    return m ? link(`#/${PAGES[m[1]]}/${v}`, v, { class: "mono" }) : v;
  }
  if (Array.isArray(v)) {
    if (!v.length) return h("span", { class: "muted" }, "none");
    if (v.every(isPlain)) {
      const shown = v.slice(0, 30).map((x) => (typeof x === "number" ? fmtNum(x) : x === null ? "—" : String(x)));
      return `${shown.join(", ")}${v.length > 30 ? ` … (${fmtNum(v.length)} in all)` : ""}`;
    }
    if (v.every(isObject)) return rowsTable(v.map((r, i) => [String(i + 1), r]), "#", depth);
  }
  if (isObject(v)) {
    const entries = Object.entries(v);
    if (!entries.length) return h("span", { class: "muted" }, "none");
    if (entries.length > 1 && entries.every(([, x]) => isObject(x))) return rowsTable(entries, "", depth);
    if (depth < 4) return kvTable(v, { depth: depth + 1 });
  }
  return h("code", {}, JSON.stringify(v));
}

// A key/value table of an object (keys in `skip` left out).
export function kvTable(obj, { id, skip = [], depth = 0 } = {}) {
  const rows = Object.entries(obj || {}).filter(([k]) => !skip.includes(k));
  return h("table", { class: depth ? "kvt nested" : "kvt", id },
    h("tbody", {}, rows.map(([k, v]) => h("tr", { "data-key": k }, h("th", {}, label(k)), h("td", {}, value(v, depth))))));
}

// "0.25" -> "p25": the quantiles of a score distribution.
const quantile = (k) => (/^0?\.\d+$/.test(k) ? `p${Math.round(100 * Number(k))}` : null);

// Rows of objects (a per-source or per-model breakdown) as one table; nested objects of plain
// values (quantiles) spread into columns.
function rowsTable(entries, first, depth, attrs = {}) {
  const flat = entries.map(([name, r]) => [name, Object.fromEntries(Object.entries(r).flatMap(([k, v]) =>
    (isObject(v) && Object.values(v).every(isPlain) && Object.keys(v).length <= 8
      ? Object.entries(v).map(([k2, v2]) => [quantile(k2) || `${k} ${k2}`, v2]) : [[k, v]])))]);
  const cols = [...new Set(flat.flatMap(([, r]) => Object.keys(r)))];
  const numeric = (c) => flat.every(([, r]) => r[c] === null || r[c] === undefined || typeof r[c] === "number");
  return h("table", { class: "grid compact", ...attrs },
    h("thead", {}, h("tr", {}, h("th", {}, first), cols.map((c) => h("th", { class: numeric(c) ? "num" : "" }, label(c))))),
    h("tbody", {}, flat.map(([name, r]) => h("tr", { "data-row": name }, h("td", {}, value(name)),
      cols.map((c) => h("td", { class: numeric(c) ? "num" : "" }, value(r[c], depth + 1)))))));
}

function block(title, ...children) {
  return h("div", { class: "summary-block" }, h("h3", {}, title), ...children);
}

function warnings(s) {
  const list = [].concat(s.warnings || [], s.warning ? [s.warning] : []);
  return list.length ? h("ul", { class: "warnings", id: "summary-warnings" }, list.map((w) => h("li", {}, w))) : null;
}

// -- evaluate -------------------------------------------------------------------------------------

function evaluateView(s) {
  const g = s.relative_gain, se = s.relative_gain_se;
  const repeats = s.repeats || 1;
  const arms = Object.entries(s).filter(([, v]) => isObject(v) && "validation_loss" in v);
  let verdict;
  if (g === null || g === undefined) verdict = "No gain: a proxy's validation loss is not finite.";
  else if (se === null || se === undefined) {
    verdict = repeats > 1 ? "Too few finite repeats for an error bar."
      : "One repeat, so no error bar: run with repeats ≥ 2 to see how much of the gain is noise.";
  } else if (Math.abs(g) <= 2 * se) verdict = "Within two standard errors of zero: not distinguishable from noise at this many repeats.";
  else verdict = g > 0 ? "The selection's proxy beat random by more than two standard errors."
    : "The selection's proxy did worse than random, by more than two standard errors.";
  const gains = s.relative_gains || [];
  const perRepeat = gains.length ? block("Each repeat", h("table", { class: "grid compact", id: "eval-repeats" },
    h("thead", {}, h("tr", {}, h("th", {}, "repeat"), arms.map(([a]) => h("th", { class: "num" }, `${a} loss`)), h("th", { class: "num" }, "gain"))),
    h("tbody", {}, gains.map((x, i) => h("tr", {}, h("td", {}, String(i + 1)),
      arms.map(([, arm]) => h("td", { class: "num" }, fmtNum((arm.validation_losses || [])[i], 5))),
      h("td", { class: "num" }, signedPct(x))))))) : null;
  const armKeys = [...new Set(arms.flatMap(([, a]) => Object.keys(a)))].filter((k) => !["validation_loss", "validation_losses"].includes(k));
  return {
    used: ["relative_gain", "relative_gain_se", "relative_gains", "relative_gain_flagged", "repeats", "proxy", "token_budget", "match", ...arms.map(([a]) => a)],
    nodes: [
      h("div", { class: "headline" },
        h("div", { class: "muted small" }, "relative gain over random (lower validation loss is better)"),
        h("div", { class: "big-number", id: "eval-gain" }, signedPct(g),
          se !== null && se !== undefined ? h("span", { class: "se" }, ` ± ${pct(se, 2)}`) : null),
        s.relative_gain_flagged ? h("div", { class: "error", role: "alert", id: "eval-flagged" }, "Flagged: the selection overlaps the validation corpus (see the warnings and contamination); this gain is inflated by the leak.") : null,
        h("div", { class: "small", id: "eval-verdict" }, verdict,
          se !== null && se !== undefined ? ` (± one standard error of the mean over ${repeats} repeats)` : "")),
      block("Proxies", h("table", { class: "grid compact", id: "eval-arms" },
        h("thead", {}, h("tr", {}, h("th", {}, "trained on"), h("th", { class: "num" }, repeats > 1 ? "validation loss (mean)" : "validation loss"),
          armKeys.map((k) => h("th", { class: "num" }, label(k))))),
        h("tbody", {}, arms.map(([name, a]) => h("tr", { "data-arm": name }, h("td", {}, name),
          h("td", { class: "num" }, h("strong", {}, fmtNum(a.validation_loss, 5))),
          armKeys.map((k) => h("td", { class: "num" }, value(a[k], 1))))))),
        repeats > 1 ? h("p", { class: "muted small" }, "Documents, tokens and training loss are the first repeat's.") : null),
      perRepeat,
      block("Setup", kvTable({ proxy: s.proxy, token_budget: s.token_budget, repeats, "random subset matched in": s.match })),
    ],
  };
}

// -- compare --------------------------------------------------------------------------------------

function compareView(s) {
  const rows = s.table || [];
  const names = rows.map((r) => r.selector);
  const w = s.winner || {};
  const box = chartBox("chart-compare-gains", 260);
  setTimeout(() => { if (box.isConnected) errorBars(box.querySelector("canvas"), names,
    rows.map((r) => r.gain), rows.map((r) => r.gain_se), { yTitle: "relative gain over random (± 1 s.e.)" }); }, 0);
  const m = s.overlap || {};
  return {
    used: ["table", "overlap", "winner"],
    nodes: [
      h("div", { class: "headline" },
        h("div", { class: "muted small" }, `${names.length} selectors on one pool, each evaluated against the same random arm over ${s.repeats} repeats`),
        h("div", { class: w.selector ? "big-number" : "", id: "compare-winner" }, w.selector ? `${w.selector} wins` : "No clear winner"),
        h("div", { class: "small", id: "compare-statement" }, w.statement || "")),
      block("Gain per selector", box),
      block("Table", grid("compare-table", ["selector", "gain", "± s.e.", "selected", "CPU s", "wall s", "selection", "evaluation"],
        rows.map((r) => ({ key: r.selector, cells: [r.selector, signedPct(r.gain), pct(r.gain_se, 2), fmtNum(r.selected),
          fmtNum(r.cpu_s), fmtNum(r.wall_s), value(r.manifest_id), value(r.evaluate_job_id)] }))),
        h("p", { class: "muted small" }, "CPU seconds are measured in the tasks' processes (and the service's own share); the evaluation's cost is in its job.")),
      block("Overlap of the selections (|A ∩ B| / k)", grid("compare-overlap", ["", ...names],
        names.map((a) => ({ key: a, cells: [a, ...names.map((b) => pct((m[a] || {})[b], 0))] })))),
    ],
  };
}

// -- selections (random, dsir, score, color_filter) ----------------------------------------------

// Selected documents per source against the pool's (from the corpus, or the scores by source).
function bySource(s, pool, noun = "selected") {
  const sel = s.selected_by_source || {};
  const names = [...new Set([...Object.keys(pool || {}), ...Object.keys(sel)])].sort();
  if (!names.length) return null;
  const total = s.num_selected || Object.values(sel).reduce((a, b) => a + b, 0);
  return block(`${noun[0].toUpperCase()}${noun.slice(1)} by source`, h("table", { class: "grid compact", id: "summary-by-source" },
    h("thead", {}, h("tr", {}, h("th", {}, "source"), h("th", { class: "num" }, noun),
      pool ? h("th", { class: "num" }, "in the pool") : null, pool ? h("th", { class: "num" }, `share of the source ${noun}`) : null,
      h("th", { class: "num" }, noun === "selected" ? "share of the selection" : `share of the ${noun}`))),
    h("tbody", {}, names.map((n) => h("tr", { "data-source": n }, h("td", {}, n || h("span", { class: "muted" }, "(no source)")),
      h("td", { class: "num" }, fmtNum(sel[n] || 0)),
      pool ? h("td", { class: "num" }, fmtNum(pool[n] ?? null)) : null,
      pool ? h("td", { class: "num" }, pool[n] ? pct((sel[n] || 0) / pool[n]) : "—") : null,
      h("td", { class: "num" }, total ? pct((sel[n] || 0) / total) : "—"))))));
}

function selectionView(s, { pool } = {}) {
  const rows = s.num_rows, n = s.num_selected;
  return {
    used: ["num_rows", "num_selected", "selected_by_source", "warnings"],
    nodes: [
      h("div", { class: "headline" },
        h("div", { class: "big-number", id: "selection-count" }, fmtNum(n),
          h("span", { class: "se" }, ` of ${fmtNum(rows)} documents selected${rows ? ` (${pct(n / rows)})` : ""}`))),
      bySource(s, pool),
    ],
  };
}

const HOLDOUT = [
  ["holdout_docs", "held-out target documents"], ["prior_loss", "prior's loss on them"],
  ["conditional_loss", "conditional's loss on them"], ["loss_reduction", "reduction (prior − conditional)"],
  ["trained_tokens", "fine-tune tokens trained"], ["best_at_tokens", "best held-out loss reached at (tokens)"],
  ["budget_tokens", "fine-tune budget (tokens)"], ["stopped_early", "stopped early"], ["lr", "learning rate"],
];

function colorFilterView(s, context) {
  const held = s.target_holdout || {};
  const known = new Set([...HOLDOUT.map(([k]) => k), "attempts", "warning", "note"]);
  const rows = [...HOLDOUT.filter(([k]) => k in held),
                ...Object.keys(held).filter((k) => !known.has(k)).map((k) => [k, label(k)])];
  const tried = (held.attempts || []).map((a) => (isObject(a) ? a.lr : a)).filter((x) => x !== undefined);
  if (tried.length) rows.push(["attempts", "learning rates tried"]);
  const cell = (k) => {
    if (k === "attempts") return tried.map((x) => fmtNum(x)).join(", ");
    if (k === "loss_reduction" && Number.isFinite(held[k])) {
      return h("strong", { class: held[k] > 0 ? "good" : "bad" }, `${held[k] > 0 ? "+" : ""}${fmtNum(held[k], 4)}`);
    }
    return value(held[k]);
  };
  const cmp = s.compare_with;
  const sel = selectionView(s, context);
  return {
    used: [...sel.used, "target_holdout", "models", "scoring", "score_by_source", "compare_with",
           "prior_model", "conditional_model", "rank_by"],
    nodes: [
      ...sel.nodes,
      block("Did fine-tuning help? The held-out slice of the target",
        held.warning ? h("div", { class: "error", role: "alert" }, held.warning) : null,
        held.note ? h("p", { class: "muted small" }, held.note) : null,
        h("table", { class: "kvt", id: "cf-diagnostics" }, h("tbody", {}, rows.map(([k, l]) =>
          h("tr", { "data-key": k }, h("th", {}, l), h("td", {}, cell(k))))))),
      cmp ? block(`Compared with ${cmp.method || "another method"}`, h("p", { id: "cf-compare" },
        `${fmtNum(cmp.overlap)} of the ${fmtNum(cmp.selected)} selected documents are also in ${cmp.method || "its"}'s top ${fmtNum(cmp.selected)}`,
        cmp.overlap_fraction !== null && cmp.overlap_fraction !== undefined ? ` (${pct(cmp.overlap_fraction)} overlap)` : "",
        cmp.sampling ? `, ${cmp.method} ranked by its ${cmp.sampling} resampling key.` : "."),
      kvTable(cmp, { skip: ["method", "overlap", "selected", "overlap_fraction", "sampling"] })) : null,
      s.score_by_source ? block("Scores by source (score = prior loss − conditional loss)",
        rowsTable(Object.entries(s.score_by_source), "source", 0, { id: "cf-score-by-source" })) : null,
      s.models ? block("Models", rowsTable(Object.entries(s.models), "model", 0, { id: "cf-models" }),
        kvTable({ prior_model: s.prior_model, conditional_model: s.conditional_model, rank_by: s.rank_by })) : null,
      s.scoring ? block("Scoring", kvTable(s.scoring, { id: "cf-scoring" })) : null,
    ],
  };
}

// -- cleaning (dedup, decontaminate, quality) -------------------------------------------------------

// A table of rows [{key, cells: [node, …]}] under `head` (the first column is text, the rest numbers).
function grid(id, head, rows, key = "data-row") {
  return h("table", { class: "grid compact", id },
    h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", { [key]: r.key }, r.cells.map((c, i) => h("td", { class: i ? "num" : "" }, c))))));
}

const sourceName = (n) => n || h("span", { class: "muted" }, "(no source)");
const shareOf = (n, d) => (d ? pct(n / d) : "—");

function keptHeadline(id, s, verb, extra) {
  const rows = s.num_rows, n = s.num_selected;
  return h("div", { class: "headline" },
    h("div", { class: "big-number", id }, fmtNum(n),
      h("span", { class: "se" }, ` of ${fmtNum(rows)} documents ${verb}${rows ? ` (${pct(n / rows)})` : ""}`)),
    extra ? h("div", { class: "small" }, extra) : null);
}

// LSH's chance that a pair of Jaccard similarity x shares at least one of b bands of r rows.
const detection = (x, b, r) => 1 - (1 - x ** r) ** b;

function lshChart(lsh, threshold) {
  const box = chartBox("chart-lsh", 220);
  const points = Array.from({ length: 101 }, (_, i) => ({ x: i / 100, y: detection(i / 100, lsh.bands, lsh.rows) }));
  const marker = threshold ? { x: threshold, label: `verified at Jaccard ≥ ${threshold}` }
    : { x: lsh.implied_threshold, label: `steepest near ${fmtNum(lsh.implied_threshold, 3)}`, color: "#64748b" };
  // Drawn once the summary is in the page: Chart.js sizes the canvas from its box.
  setTimeout(() => { if (box.isConnected) lines(box.querySelector("canvas"), [{ label: "chance to become a candidate pair", points }],
    { xTitle: "Jaccard similarity of two documents' shingles", yTitle: "probability", logX: false, marker }); });
  return box;
}

function dedupView(s, { pool, spec = {} }) {
  const lsh = s.lsh;
  const removed = s.num_rows - s.num_selected - (s.num_empty || 0);
  const matched = Object.entries(s.matched_against || {});
  const figures = [
    ["clusters", "clusters of duplicates (2 or more pool documents)", fmtNum(s.clusters)],
    ["largest_cluster", "largest cluster (documents)", fmtNum(s.largest_cluster)],
    ["removed", "documents removed as duplicates", fmtNum(removed)],
    ["exact_duplicates", "exact repeats of an earlier text (normalised)", fmtNum(s.exact_duplicates)],
    ["num_empty", "empty documents (never kept)", fmtNum(s.num_empty)],
    ["candidate_pairs", lsh ? "candidate pairs (a shared LSH band)" : "candidate pairs (equal text hashes)", fmtNum(s.candidate_pairs)],
    ["verified_pairs", "pairs kept after verification", spec.threshold ? fmtNum(s.verified_pairs) : `${fmtNum(s.verified_pairs)} (no threshold: every candidate is a pair)`],
    ["rounds", "label-propagation rounds (connected components)", fmtNum(s.rounds)],
    ["keep", "kept member of a cluster", isObject(spec.keep) ? `highest ${spec.keep.column} of ${spec.keep.manifest}` : spec.keep || "first"],
  ].filter(([k]) => k === "removed" || k === "keep" || s[k] !== undefined);
  const lshRows = lsh ? [
    ["bands", "bands × rows", `${lsh.bands} × ${lsh.rows} = ${lsh.bands * lsh.rows} MinHash values per document`],
    ["ngram", "shingles", `${lsh.ngram}-word n-grams`],
    ["implied_threshold", "Jaccard at the curve's steepest point, (1/b)^(1/r)", fmtNum(lsh.implied_threshold, 4)],
    ["detection_probability_at_0.8", "chance a pair at Jaccard 0.8 becomes a candidate", pct(lsh["detection_probability_at_0.8"], 2)],
    ["threshold", "verification (estimated Jaccard of the full signatures)", spec.threshold ? `≥ ${spec.threshold}` : "none"],
  ] : [];
  const kvRows = (id, rows) => h("table", { class: "kvt", id }, h("tbody", {}, rows.map(([k, l, v]) =>
    h("tr", { "data-key": k }, h("th", {}, l), h("td", {}, v)))));
  return {
    used: ["num_rows", "num_selected", "selected_by_source", "clusters", "largest_cluster", "exact_duplicates", "num_empty",
           "candidate_pairs", "verified_pairs", "rounds", "lsh", "matched_against", "method"],
    nodes: [
      keptHeadline("dedup-kept", s, "kept",
        `${fmtNum(s.clusters)} clusters of duplicates, the largest of ${fmtNum(s.largest_cluster)} documents; ` +
        `${s.method === "exact" ? "exact" : "fuzzy (MinHash-LSH)"} deduplication. The manifest page shows a cluster's members side by side.`),
      block("Duplicates", kvRows("dedup-figures", figures)),
      matched.length ? block("Against corpora already ingested", grid("dedup-matched", ["corpus", "pool documents dropped", "share of the pool"],
        matched.map(([c, n]) => ({ key: c, cells: [value(c), fmtNum(n), shareOf(n, s.num_rows)] })))) : null,
      lsh ? block("LSH parameters", h("div", { class: "two top" }, kvRows("dedup-lsh", lshRows), lshChart(lsh, spec.threshold))) : null,
      bySource(s, pool, "kept"),
    ],
  };
}

function decontaminateView(s, { pool, spec = {} }) {
  const total = s.num_rows;
  const byCorpus = Object.entries(s.contaminated_by_corpus || {}).sort((a, b) => b[1] - a[1]);
  const bySrc = s.contaminated_by_source || {};
  const kept = s.selected_by_source || {};
  const sources = [...new Set([...Object.keys(pool || {}), ...Object.keys(bySrc), ...Object.keys(kept)])].sort();
  const rule = `${spec.n || 13}-word n-grams; contaminated: at least ${fmtNum(spec.min_matches ?? 1)} distinct matching n-gram` +
    `${(spec.min_matches ?? 1) === 1 ? "" : "s"}${spec.min_fraction ? ` and at least ${pct(spec.min_fraction)} of its n-grams` : ""}.`;
  return {
    used: ["num_rows", "num_selected", "selected_by_source", "contaminated", "contaminated_by_corpus", "contaminated_by_source", "index_ngrams"],
    nodes: [
      h("div", { class: "headline" },
        h("div", { class: "big-number", id: "decon-count" }, fmtNum(s.contaminated),
          h("span", { class: "se" }, ` of ${fmtNum(total)} documents contaminated${total ? ` (${pct(s.contaminated / total, 2)})` : ""}`)),
        h("div", { class: "small" }, `${rule} Index: ${fmtNum(s.index_ngrams)} distinct n-grams of the compared corpora.`)),
      block("Contaminated by corpus", byCorpus.length
        ? grid("decon-by-corpus", ["matched corpus", "pool documents", "share of the pool"],
          byCorpus.map(([c, n]) => ({ key: c, cells: [value(c), fmtNum(n), shareOf(n, total)] })))
        : h("p", { class: "muted", id: "decon-by-corpus" }, "No pool document shares enough n-grams with the compared corpora.")),
      sources.length ? block("Contaminated by source", grid("decon-by-source",
        ["source", "contaminated", ...(pool ? ["in the pool", "share of the source"] : []), "kept"],
        sources.map((n) => ({ key: n, cells: [sourceName(n), fmtNum(bySrc[n] || 0),
          ...(pool ? [fmtNum(pool[n] ?? null), shareOf(bySrc[n] || 0, pool[n])] : []), fmtNum(kept[n] || 0)] })))) : null,
    ],
  };
}

function qualityView(s, { spec = {} }) {
  const total = s.num_rows;
  const presets = Object.keys(s.rejected_by_preset || s.presets || {});
  const chosen = new Set(spec.presets || presets);
  const allRules = Object.entries(s.rejected_by_rule || {});
  const rules = allRules.filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  const idle = allRules.filter(([, n]) => !n).map(([r]) => r);
  const sources = Object.entries(s.by_source || {});
  return {
    used: ["num_rows", "num_selected", "selected_by_source", "rejected_by_rule", "rejected_by_preset", "by_source", "presets"],
    nodes: [
      keptHeadline("quality-kept", s, "pass",
        `Selected: non-empty documents that pass ${[...chosen].join(", ")}. Every statistic is a column of the manifest.`),
      block("Rejected per preset", grid("quality-presets", ["preset", "rejected", "share of the pool", "decides the selection"],
        presets.map((p) => ({ key: p, cells: [p, fmtNum(s.rejected_by_preset[p]), shareOf(s.rejected_by_preset[p], total),
                                          chosen.has(p) ? "yes" : "no"] })))),
      block("Rejected per rule", grid("quality-rules", ["rule", "rejected", "share of the pool"],
        rules.map(([r, n]) => ({ key: r, cells: [h("span", { class: "mono" }, r), fmtNum(n), shareOf(n, total)] }))),
        idle.length ? h("p", { class: "small", id: "quality-rules-none" }, h("span", { class: "muted" }, `Rejected nothing (${idle.length} rules): `),
          idle.map((r, i) => [i ? ", " : "", h("span", { class: "mono" }, r)])) : null,
        h("p", { class: "muted small" }, "A document fails a preset when it fails any of its rules, so one document can count under several rules.")),
      sources.length ? block("Per source", grid("quality-by-source",
        ["source", "documents", "pass", "share passing", ...presets.map((p) => `rejected by ${p}`)],
        sources.map(([n, r]) => ({ key: n, cells: [sourceName(n), fmtNum(r.docs), fmtNum(r.selected), shareOf(r.selected, r.docs),
          ...presets.map((p) => fmtNum((r.rejected_by_preset || {})[p]))] }))),
        Object.keys(s.by_source).length >= 50 ? h("p", { class: "muted small" }, "The 50 largest sources.") : null) : null,
      s.presets ? block("Retune without measuring again",
        h("p", { class: "muted small" }, "Each preset is SQL over the statistic columns: change a threshold and count in the manifest's SQL box, e.g. ",
          h("code", {}, "SELECT count(*) FROM m WHERE NOT (<preset>)"), "."),
        h("table", { class: "kvt", id: "quality-sql" }, h("tbody", {}, Object.entries(s.presets).map(([p, sql]) =>
          h("tr", { "data-key": p }, h("th", {}, p), h("td", {}, h("code", { class: "sql" }, sql))))))) : null,
    ],
  };
}

const VIEWS = {
  evaluate: evaluateView,
  compare: compareView,
  color_filter: colorFilterView,
  dsir: selectionView,
  random: selectionView,
  dedup: dedupView,
  decontaminate: decontaminateView,
  quality: qualityView,
};

// The summary of `job` (context: {pool: {source: documents}} when the pool corpus is known).
export function renderSummary(job, context = {}) {
  const s = (job.result && job.result.summary) || {};
  if (!Object.keys(s).length) return null;
  const view = VIEWS[job.kind] ? VIEWS[job.kind](s, { ...context, spec: job.spec || {} }) : { used: [], nodes: [] };
  const rest = Object.keys(s).filter((k) => !view.used.includes(k) && k !== "warnings" && k !== "warning");
  return h("div", { class: "summary", id: "job-summary", "data-kind": job.kind },
    warnings(s),
    view.nodes,
    rest.length ? block(view.nodes.length ? "Other figures" : "Figures", kvTable(s, { id: "summary-figures", skip: Object.keys(s).filter((k) => !rest.includes(k)) })) : null,
    h("details", { class: "raw", id: "summary-raw" }, h("summary", {}, "raw JSON"), json(s)));
}
