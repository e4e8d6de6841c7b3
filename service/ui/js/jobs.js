// Jobs: the live list, the submission forms, and a job's page fed by its server-sent events.
import { api, followJob } from "./api.js";
import { badge, errorBox, fmtDuration, fmtNum, fmtTime, h, json, kv, link, progressBar, section, setContent, table } from "./dom.js";
import { buildForm } from "./form.js";
import { rejectionsSection } from "./rejections.js";
import { kvTable, renderSummary } from "./summary.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// Kinds whose summaries count by source against the pool (result.corpus_id)
const SELECTIONS = new Set(["random", "dsir", "color_filter", "dedup", "decontaminate", "quality"]);

function progressCell(job) {
  const p = job.progress || {};
  if (job.state === "succeeded") return progressBar(1, 1);
  if (p.waiting && !TERMINAL.has(job.state)) return h("span", { class: "small waiting" }, p.waiting);
  if (!p.total) return h("span", { class: "muted" }, p.stage || "");
  return h("div", {}, progressBar(p.done, p.total), h("div", { class: "small muted" }, `${p.stage || ""} ${fmtNum(p.done)} / ${fmtNum(p.total)} ${p.unit || ""}`));
}

export async function listPage(el, { signal }) {
  const body = h("div", { id: "jobs-table" });
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("a", { class: "button", href: "#/jobs/new", id: "new-job" }, "New job")),
    section("All jobs", h("p", { class: "muted small" }, "Refreshed every two seconds."), body));
  const refresh = async () => {
    const page = await api("/v1/jobs?limit=200", { signal });
    setContent(body, table([
      { label: "job", value: (j) => link(`#/jobs/${j.id}`, j.id, { class: "mono" }) },
      { label: "kind", value: (j) => j.kind },
      { label: "name", value: (j) => j.name || "" },
      { label: "state", value: (j) => badge(j.state) },
      { label: "progress", value: progressCell, cls: "wide" },
      { label: "created", value: (j) => fmtTime(j.created_at) },
    ], page.items, { rowAttrs: (j) => ({ "data-job-id": j.id, "data-state": j.state }), empty: "No jobs yet: submit one." }));
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  return () => clearInterval(timer);
}

export async function newPage(el, kindName, { signal }) {
  const { items } = await api("/v1/kinds", { signal });
  const chosen = items.find((k) => k.name === kindName) || items.find((k) => k.name === "dsir") || items[0];
  const select = h("select", { id: "kind" }, items.map((k) => h("option", { value: k.name, selected: k === chosen }, k.name)));
  select.addEventListener("change", () => { location.hash = `#/jobs/new/${select.value}`; });
  const form = await buildForm(chosen, { signal, onSubmitted: (job) => { location.hash = `#/jobs/${job.id}`; } });
  setContent(el,
    h("div", { class: "page-head" }, h("h1", {}, "New job"), link("#/jobs", "← all jobs")),
    h("section", { class: "card" },
      h("div", { class: "field" }, h("label", { for: "kind" }, "kind"), select),
      h("p", { class: "muted" }, chosen.description),
      form));
}

function resultLinks(job) {
  const r = job.result || {};
  const out = [];
  if (r.manifest_id) out.push(["manifest", link(`#/manifests/${r.manifest_id}`, r.manifest_id, { id: "result-manifest", class: "mono" })]);
  if (r.corpus_id) out.push(["corpus", link(`#/corpora/${r.corpus_id}`, r.corpus_id, { class: "mono" })]);
  if (r.model_id) out.push(["model", link(`#/models/${r.model_id}`, r.model_id, { class: "mono" })]);
  if (r.curriculum_id) out.push(["curriculum run", link(`#/curricula/${r.curriculum_id}`, r.curriculum_id, { id: "result-curriculum", class: "mono" })]);
  if (job.kind === "projection" && job.state === "succeeded") {
    out.push(["projection", link(`#/projections/${job.id}`, "curves, purchase plan and mixture sliders", { id: "result-projection" })]);
  }
  return out;
}

// Seconds as "0.4 s" under ten seconds, else as fmtDuration does.
const fmtSeconds = (s) => (Number.isFinite(s) && s < 10 ? `${s.toFixed(1)} s` : fmtDuration(s));

// Every stage the job went through, from its record (progress.stages), each with its counts and
// how long it took; the last one is running while the job is. Then the stages still to come
// (progress.plan), each with its estimate and what that rests on.
function stageList(job) {
  const p = job.progress || {};
  const stages = p.stages && p.stages.length ? p.stages : (p.stage ? [{ stage: p.stage, done: p.done, total: p.total, unit: p.unit }] : []);
  const running = !TERMINAL.has(job.state);
  const plan = p.plan || [];
  const planned = (name) => plan.find((x) => x.stage === name && x.state === "running") || {};
  const ran = stages.map((s, i) => {
    const current = running && i === stages.length - 1;
    const failed = !running && job.state !== "succeeded" && i === stages.length - 1;
    // A stage that may stop early: its total is a ceiling while it runs, what it used once done.
    const ceiling = s.up_to && (current ? " (up to; it may stop early)" : s.done < s.up_to ? ` (stopped early; up to ${fmtNum(s.up_to)})` : "");
    const est = current ? planned(s.stage) : {};
    return h("li", { class: current ? "current" : failed ? "stopped" : "done", "data-stage": s.stage },
      h("span", { class: "stage-name" }, s.stage),
      s.total ? h("span", { class: "muted" }, ` ${fmtNum(s.done)} / ${fmtNum(s.total)} ${s.unit || ""}${ceiling || ""}`) : null,
      Number.isFinite(s.seconds) ? h("span", { class: "stage-time" }, ` ${fmtSeconds(s.seconds)}`) : null,
      current ? ` (running${Number.isFinite(est.eta_s) ? `, ~${fmtSeconds(est.eta_s)} left` : ""})` : failed ? ` (${job.state})` : " ✓");
  });
  const toCome = running ? plan.filter((x) => x.state === "pending").map((x) =>
    h("li", { class: "pending", "data-stage": x.stage, title: x.basis || "" },
      h("span", { class: "stage-name" }, x.stage),
      ` (to come: ${Number.isFinite(x.eta_s) ? `~${fmtSeconds(x.eta_s)}` : "time unknown"})`)) : [];
  return h("ol", { class: "stages", id: "job-stages" }, [...ran, ...toCome]);
}

export async function jobPage(el, jobId, { signal }) {
  let job = await api(`/v1/jobs/${jobId}`, { signal });
  const head = h("div", { class: "page-head" });
  const live = h("section", { class: "card", id: "job-live" });
  const result = h("div", { id: "job-result" });
  const details = h("div");
  const rejections = h("div", { id: "job-rejections" });
  setContent(el, head, live, result, rejections, details);
  // A selection or export built with restrict: each filter's rejections per source, once it succeeded.
  let rejectionsShown = false;
  const showRejections = () => {
    const r = job.result || {}, builtOn = (r.summary || {}).built_on || [];
    if (rejectionsShown || job.state !== "succeeded" || !builtOn.length || !r.manifest_id) return;
    rejectionsShown = true;
    rejectionsSection(rejections, r.manifest_id, { restrict: builtOn, signal,
                                                   selectedOnly: job.kind === "export" && (job.spec || {}).selected_only !== false });
  };
  // A selection's pool, for its per-source shares (fetched once, when the job has finished).
  let pool;
  const poolSources = async () => {
    const id = job.result && job.result.corpus_id;
    if (pool !== undefined || !id || job.state !== "succeeded" || !SELECTIONS.has(job.kind)) return;
    pool = null;
    try { pool = (await api(`/v1/corpora/${id}`, { signal })).sources || null; } catch { /* gone: shares only */ }
  };

  const render = () => {
    const p = job.progress || {};
    setContent(head, h("h1", {}, `${job.kind} job `, h("span", { class: "mono" }, job.id)), badge(job.state),
      !TERMINAL.has(job.state) ? h("button", { id: "cancel-job", class: "danger", onclick: cancel }, "Cancel") : null,
      link("#/jobs", "← all jobs"));
    head.querySelector(".badge").id = "job-state";
    const done = job.state === "succeeded";
    const frac = done ? 1 : (p.total ? p.done / p.total : 0);
    setContent(live,
      h("h2", {}, "Progress"),
      progressBar(done ? 1 : p.done, done ? 1 : p.total, { id: "job-progress", "data-fraction": frac.toFixed(4) }),
      kv([
        // The current stage's figures while it runs; once the job ends, the stages below say it all.
        ...(TERMINAL.has(job.state) ? [] : [
          ["stage", h("span", { id: "job-stage" }, p.stage || "—")],
          ["done", p.total ? `${fmtNum(p.done)} / ${fmtNum(p.total)} ${p.unit || ""} (${(100 * frac).toFixed(1)}%)` : "—"],
          ["rate", h("span", { id: "job-rate" }, p.rate_per_s ? `${fmtNum(p.rate_per_s, 3)} ${p.unit || "units"}/s` : "—")],
          // The whole job's ETA: this stage's remaining time plus the stages to come; unknown when any is.
          ["ETA (whole job)", h("span", { id: "job-eta", title: "this stage from its measured rate; stages to come from earlier jobs of this kind" },
            Number.isFinite(p.eta_s) ? fmtDuration(p.eta_s) : "unknown")],
          ...(p.waiting ? [["waiting", h("span", { id: "job-waiting", class: "waiting" }, p.waiting)]] : [])]),
        ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)], ["finished", fmtTime(job.finished_at)],
        ["elapsed", job.started_at ? fmtDuration(((job.finished_at ? new Date(job.finished_at) : new Date()) - new Date(job.started_at)) / 1000) : "—"],
      ]),
      h("h3", {}, "Stages"),
      stageList(job),
      job.error ? h("div", { class: "error", id: "job-error", role: "alert" }, `${job.error.code}: ${job.error.message}`) : null);
    const links = resultLinks(job);
    setContent(result, links.length || job.result ? section("Result", kv(links), job.result ? renderSummary(job, { pool }) : null) : null);
    setContent(details, section("Spec", kvTable(job.spec, { id: "job-spec" }),
      h("details", { class: "raw" }, h("summary", {}, "raw JSON"), json(job.spec))));
  };

  async function cancel() {
    try {
      job = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" });
      render();
    } catch (e) {
      live.append(errorBox(e, "Cancel failed: "));
    }
  }

  if (TERMINAL.has(job.state)) {
    await poolSources();
    render();
    showRejections();
  } else {
    const show = async (j) => {
      const changed = JSON.stringify(j) !== JSON.stringify(job);
      job = j;
      if (changed) { await poolSources(); render(); showRejections(); }
    };
    render();
    followJob(jobId, show, signal)
      .then(async () => { if (!signal.aborted) show(await api(`/v1/jobs/${jobId}`, { signal })); })
      .catch((e) => { if (e.name !== "AbortError") live.append(errorBox(e, "Live updates stopped: ")); });
  }
}
