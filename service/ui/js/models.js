// Models: those trained by jobs and those registered from local checkpoints; a model's page with
// its training figures and the jobs that used it.
import { api } from "./api.js";
import { badge, fmtNum, fmtTime, h, json, kv, link, section, setContent, table } from "./dom.js";
import { kvTable } from "./summary.js";

export async function listPage(el, { signal }) {
  const page = await api("/v1/models?limit=1000", { signal });
  setContent(el, h("div", { class: "page-head" }, h("h1", {}, "Models")),
    section("All models", table([
      { label: "model", value: (m) => link(`#/models/${m.id}`, m.id, { class: "mono" }) },
      { label: "name", value: (m) => m.name || "" },
      { label: "source", value: (m) => m.source },
      { label: "job", value: (m) => (m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id, { class: "mono" }) : "—") },
      { label: "parameters", value: (m) => fmtNum(m.meta && m.meta.params), cls: "num" },
      { label: "created", value: (m) => fmtTime(m.created_at) },
    ], page.items, { id: "models-table", rowAttrs: (m) => ({ "data-model-id": m.id }), empty: "No models yet." })));
}

// Whether a job's spec names the model anywhere (prior.model, conditional.model, model, …).
const names = (spec, id) => JSON.stringify(spec || {}).includes(`"${id}"`);

export async function modelPage(el, modelId, { signal }) {
  const [m, jobs] = await Promise.all([api(`/v1/models/${modelId}`, { signal }), api("/v1/jobs?limit=200", { signal })]);
  const users = jobs.items.filter((j) => j.id !== m.job_id && (names(j.spec, m.id) || (j.result && j.result.model_id === m.id)));
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, `Model ${m.name || ""} `, h("span", { class: "mono muted" }, m.id)),
      link("#/models", "← all models")),
    section("Overview", kv([
      ["name", m.name || "—"], ["source", m.source],
      ["trained by", m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id, { class: "mono" }) : "—"],
      ["created", fmtTime(m.created_at)],
    ])),
    section("Details", kvTable(m.meta || {}, { id: "model-meta" }),
      h("details", { class: "raw" }, h("summary", {}, "raw JSON"), json(m.meta || {}))),
    section("Jobs that used it", table([
      { label: "job", value: (j) => link(`#/jobs/${j.id}`, j.id, { class: "mono" }) },
      { label: "kind", value: (j) => j.kind },
      { label: "name", value: (j) => j.name || "" },
      { label: "state", value: (j) => badge(j.state) },
      { label: "created", value: (j) => fmtTime(j.created_at) },
    ], users, { id: "model-jobs", empty: "No other job names this model (of the latest 200)." })));
}
