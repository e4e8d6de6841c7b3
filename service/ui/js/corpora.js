// Corpora: the list with an upload form, and a corpus's page (size, sources, empty docs, a sample).
import { api, download } from "./api.js";
import { bars, chartBox } from "./charts.js";
import { badge, errorBox, fmtBytes, fmtNum, fmtTime, h, kv, link, section, setContent, table } from "./dom.js";

function uploadForm() {
  const file = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.ndjson,.csv,.parquet,.gz,.zst" });
  const name = h("input", { type: "text", id: "upload-name", placeholder: "name (default: the file's name)" });
  const status = h("div", { id: "upload-status" });
  const button = h("button", { type: "submit", id: "upload" }, "Upload");
  const form = h("form", { class: "inline-form", id: "upload-form" }, file, name, button, status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.replaceChildren();
    const f = file.files[0];
    if (!f) { status.append(errorBox({ message: "choose a file first" })); return; }
    const body = new FormData();
    body.append("file", f, f.name);
    body.append("name", name.value || f.name.replace(/\.(jsonl|json|ndjson|csv|parquet)(\.(gz|zst))?$/i, ""));
    button.disabled = true;
    status.append(h("span", { class: "muted" }, `uploading ${fmtBytes(f.size)}…`));
    try {
      const corpus = await api("/v1/corpora", { method: "POST", body });
      location.hash = `#/corpora/${corpus.id}`;
    } catch (e) {
      status.replaceChildren(errorBox(e, "Upload refused: "));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export async function listPage(el, { signal }) {
  const page = await api("/v1/corpora?limit=1000", { signal });
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "Corpora")),
    section("Upload a corpus", h("p", { class: "muted small" },
      "JSONL, Parquet or CSV, plain or .gz / .zst, with text (and optionally id and source) fields."), uploadForm()),
    section("All corpora", table([
      { label: "name", value: (c) => link(`#/corpora/${c.id}`, c.name) },
      { label: "id", value: (c) => h("span", { class: "mono" }, c.id) },
      { label: "state", value: (c) => badge(c.state) },
      { label: "documents", value: (c) => fmtNum(c.num_docs), cls: "num" },
      { label: "size", value: (c) => fmtBytes(c.num_bytes), cls: "num" },
      { label: "shards", value: (c) => fmtNum(c.num_shards), cls: "num" },
      { label: "empty", value: (c) => fmtNum(c.num_empty), cls: "num" },
      { label: "sources", value: (c) => Object.keys(c.sources || {}).length, cls: "num" },
      { label: "created", value: (c) => fmtTime(c.created_at) },
    ], page.items, { id: "corpora-table", rowAttrs: (c) => ({ "data-corpus-id": c.id }), empty: "No corpora yet: upload one." })));
}

export async function corpusPage(el, corpusId, { signal }) {
  const c = await api(`/v1/corpora/${corpusId}`, { signal });
  const sources = Object.entries(c.sources || {}).sort((a, b) => b[1] - a[1]);
  const chart = chartBox("chart-corpus-sources", Math.max(160, 40 + 28 * sources.length));
  const sample = h("div", { id: "corpus-sample" }, h("p", { class: "muted" }, "Loading…"));
  const dl = (fmt) => h("button", { class: "quiet", onclick: () => download(`/v1/corpora/${c.id}/download?format=${fmt}`, `${c.name}.${fmt}`)
    .catch((e) => sample.before(errorBox(e))) }, fmt);
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, `Corpus ${c.name} `, h("span", { class: "mono muted" }, c.id)), badge(c.state),
      link("#/corpora", "← all corpora")),
    c.error ? errorBox(c.error) : null,
    section("Size", kv([
      ["documents", fmtNum(c.num_docs)], ["stored bytes", fmtBytes(c.num_bytes)], ["shards", fmtNum(c.num_shards)],
      ["empty documents", h("span", { id: "corpus-empty" }, fmtNum(c.num_empty))],
      ["created", fmtTime(c.created_at)], ["job", c.job_id ? link(`#/jobs/${c.job_id}`, c.job_id) : "—"],
      ["download", c.state === "ready" ? h("span", { class: "buttons" }, dl("jsonl"), dl("parquet"), dl("csv")) : "—"],
    ])),
    section(`Sources (${sources.length})`, sources.length ? chart : h("p", { class: "muted" }, "No source field.")),
    c.empty_doc_ids && c.empty_doc_ids.length ? section("Empty documents (first ids; stored, never selected)",
      h("p", { class: "mono small" }, c.empty_doc_ids.join(", "))) : null,
    section("Sample documents", sample));
  if (sources.length) {
    bars(chart.querySelector("canvas"), sources.map((s) => s[0]), [{ label: "documents", data: sources.map((s) => s[1]) }],
         { horizontal: true });
  }
  if (c.state !== "ready") { setContent(sample, h("p", { class: "muted" }, `The corpus is ${c.state}.`)); return; }
  const { items } = await api(`/v1/corpora/${c.id}/sample?n=10`, { signal });
  setContent(sample, table([
    { label: "id", value: (d) => h("span", { class: "mono" }, d.id) },
    { label: "source", value: (d) => d.source ?? "" },
    { label: "text", value: (d) => snippet(d.text), cls: "text" },
  ], items));
}

export function snippet(text, n = 280) {
  if (!text) return h("span", { class: "muted" }, "(empty)");
  return text.length > n ? `${text.slice(0, n)}…` : text;
}
