// A curriculum run: its epochs, the samples kept in each, and the fraction of visits saved so far.
import { api } from "./api.js";
import { bars, chartBox } from "./charts.js";
import { fmtNum, fmtTime, h, json, kv, link, pct, progressBar, section, setContent } from "./dom.js";

export async function curriculumPage(el, runId, { signal }) {
  const draw = async () => {
    const [c, epochs] = await Promise.all([api(`/v1/curricula/${runId}`, { signal }), api(`/v1/curricula/${runId}/epochs`, { signal })]);
    const chart = chartBox("chart-epochs", 260);
    setContent(el,
      h("div", { class: "page-head" }, h("h1", {}, `Curriculum run `, h("span", { class: "mono" }, c.id)),
        link(`#/jobs/${c.job_id}`, "job"), link(`#/corpora/${c.corpus_id}`, "corpus")),
      section("Run", kv([
        ["method", c.method], ["epoch", h("span", { id: "cur-epoch" }, `${c.epoch} (epochs run 0 … ${c.epochs - 1})`)],
        ["samples", fmtNum(c.num_samples)], ["losses posted this epoch", fmtNum(c.losses_posted)],
        ["saved so far", h("span", { id: "cur-saved" }, pct(c.saved_fraction))],
        ["created", fmtTime(c.created_at)],
      ]), h("p", { class: "muted small" }, "Saved fraction: pruned sample-visits so far over N × epochs (the whole run)."),
        progressBar(c.saved_fraction, 1, { id: "cur-saved-bar" })),
      section("Samples kept per epoch", chart),
      section("Parameters and cost", json({ params: c.params, cost: c.cost })));
    const labels = Array.from({ length: c.epochs }, (_, e) => `epoch ${e}`);
    const kept = Array(c.epochs).fill(null);
    for (const it of epochs.items) kept[it.epoch] = it.kept;
    bars(chart.querySelector("canvas"), labels, [
      { label: "kept", data: kept },
      { label: "pruned", data: kept.map((k) => (k === null ? null : epochs.num_samples - k)), color: "#cbd5e1" },
    ], { yTitle: "samples" });
  };
  await draw();
  const timer = setInterval(() => draw().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
