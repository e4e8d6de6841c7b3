// Models: those trained by jobs and those registered from local checkpoints.
import { api } from "./api.js";
import { fmtTime, h, link, section, setContent, table } from "./dom.js";

export async function listPage(el, { signal }) {
  const page = await api("/v1/models?limit=1000", { signal });
  setContent(el, h("div", { class: "page-head" }, h("h1", {}, "Models")),
    section("All models", table([
      { label: "model", value: (m) => h("span", { class: "mono" }, m.id) },
      { label: "name", value: (m) => m.name || "" },
      { label: "source", value: (m) => m.source },
      { label: "job", value: (m) => (m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id, { class: "mono" }) : "—") },
      { label: "details", value: (m) => h("span", { class: "small muted" },
        Object.entries(m.meta || {}).filter(([, v]) => typeof v !== "object").slice(0, 6).map(([k, v]) => `${k}=${v}`).join("  ")) },
      { label: "created", value: (m) => fmtTime(m.created_at) },
    ], page.items, { empty: "No models yet." })));
}
