"""The `compare` kind: a bake-off of selectors on one pool (issue 30, item 4).

Each chosen selector runs on the same pool, target, restriction and size; each selection is then
evaluated with the same proxies (options and seeds) against the same random subsets, so that the
gains are paired repeat by repeat; the summary is the table (gain ± standard error, CPU seconds,
wall time), the pairwise overlap of the selections, and which selector wins with what confidence.

The selectors and evaluations run inside this job, one after another, each as a sub-run: the kind's
own `run` with a context (`SubRun`) whose job id is derived from this job's and the part's role, so
their files have fixed names and a resumed compare skips what was finished (the engine's rule for
every job). A finished part is recorded as a job of its kind (succeeded, named after the compare,
`summary.part_of` this job): its manifest stays usable like any selection's and a resumed compare
reads it back instead of running it again. Child jobs in the engine's queue were not chosen: a
parent waiting in a job slot for children queued behind it deadlocks once the slots are full
(THRESHER_MAX_CONCURRENT_JOBS), and the children would not share the parent's cancel and resume.

Evaluations run one after another so that the first trains the random arm (one per repeat) and the
others read it back from evaluate's random-arm cache (same pool, restriction, size, seed, proxy).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model, model_validator
from scipy import stats

from storage.catalog import NotFound, now
from storage.errors import DomainError
from storage.manifests import manifest_files, selection_overlap
from workers.driver.engine import JobContext, JobFailed, derived_id
from workers.jobs import classifier, embedding, lm, selection
from workers.kind import BOOKKEEPING, JobKind
from workers.specs import CorpusId, Restricted, Seed, Select, SelectMode, StrictModel, distinct
from workers.training import TrainOptions

SELECTORS = ("random", "dsir", "classifier", "embedding", "color_filter")
SelectorName = Literal["random", "dsir", "classifier", "embedding", "color_filter"]
KINDS_OF = {k.name: k for m in (selection, classifier, embedding, lm) for k in m.KINDS}
EVALUATE = KINDS_OF["evaluate"]
SHARED = ("pool", "target", "select", "mode", "restrict")  # what compare sets for every selector
ALPHA = 0.05  # the winner's one-sided paired test


def _options_model(name: str) -> type[BaseModel]:
    """A selector's spec without the fields compare sets for all of them."""
    spec = KINDS_OF[name].spec
    fields = {n: (f.annotation, f) for n, f in spec.model_fields.items() if n not in SHARED}
    return create_model(f"{spec.__name__.removesuffix('Spec')}CompareOptions", __base__=StrictModel,
                        __doc__=f"Options of the {name} selector (its spec without {', '.join(SHARED)}).", **fields)


SelectorOptions = create_model(
    "SelectorOptions", __base__=StrictModel, __doc__="Per selector, the fields of its spec that compare does not set.",
    **{name: (_options_model(name) | None, None) for name in SELECTORS})


_distinct = distinct("selectors names")


class CompareSpec(Restricted):
    pool: CorpusId
    target: CorpusId
    validation: CorpusId = Field(description="the corpus every proxy's validation loss is measured on")
    select: Select
    mode: SelectMode = "global"
    selectors: Annotated[list[SelectorName], AfterValidator(_distinct)] = Field(
        list(SELECTORS), min_length=1, max_length=len(SELECTORS), description="the selectors to compare")
    options: SelectorOptions = Field(SelectorOptions(), description=(
        "per selector, more fields of its spec (e.g. {\"dsir\": {\"buckets\": 4096}})"))
    proxy: TrainOptions = TrainOptions()
    seed: Seed = 0
    repeats: int = Field(2, ge=2, le=16, description=(
        "proxy pairs per selector, each with its own proxy seed and random subset (the same for every selector)"))
    match: Literal["documents", "characters"] = "documents"
    contamination: lm.ContaminationCheck = lm.ContaminationCheck()

    @model_validator(mode="after")
    def _options_of_chosen(self):
        for name in SELECTORS:
            if getattr(self.options, name) is not None and name not in self.selectors:
                raise ValueError(f"options.{name} is given but {name} is not among selectors")
        for name in self.selectors:  # what the selector's own spec checks across its fields
            try:
                self.selector_spec(name)
            except ValidationError as e:
                raise ValueError(f"options.{name}: {e.errors()[0]['msg']}") from None
        return self

    def selector_spec(self, name: str) -> BaseModel:
        opts = getattr(self.options, name)
        return KINDS_OF[name].spec.model_validate({
            **(opts.model_dump(exclude_unset=True) if opts is not None else {}),
            "pool": self.pool, "select": self.select, "mode": self.mode, "restrict": list(self.restrict),
            **({"target": self.target} if "target" in KINDS_OF[name].spec.model_fields else {})})

    def evaluate_spec(self, manifest_id: str) -> BaseModel:
        # The selection's manifest says what it was built on (restrict): evaluate draws the random
        # arm from that same restricted pool.
        return EVALUATE.spec.model_validate({
            "selection": manifest_id, "validation": self.validation, "proxy": self.proxy, "seed": self.seed,
            "repeats": self.repeats, "match": self.match, "contamination": self.contamination})


# -- sub-runs ------------------------------------------------------------------------------------

@dataclass
class SubRun(JobContext):
    """A selector's or an evaluation's run inside a compare job: its own job id (its files, its
    manifest), the parent's cancel, and its progress shown as the parent's, stage `<role>: <stage>`."""
    parent: JobContext | None = None
    role: str = ""

    def progress(self, stage: str, done: float, total: float, unit: str, force: bool = False,
                 detail: dict | None = None) -> None:
        self.parent.progress(f"{self.role}: {stage}", done, total, unit, force, detail)

    def _check_waiting(self, stage: str, started: bool) -> None:
        # Measured against this part's own stage resources, reported as the parent's (the job the
        # engine knows, and the one other jobs' waits name).
        super()._check_waiting(stage, started)
        p = self.parent
        p.holding = f"{self.role}: {self.holding}" if self.holding else None
        if p.waiting != self.waiting:
            p.waiting = self.waiting
            if p._stage:
                p._write()


def sub_run(ctx: JobContext, role: str, kind: JobKind, spec: BaseModel) -> dict:
    """The part `role` of a compare job: its job record if a run of it finished (a resumed compare),
    else `kind.run` with a SubRun, recorded as a succeeded job of `kind` with its cost."""
    child_id = derived_id("job", ctx.job_id, role)
    try:
        rec = ctx.catalog.get("jobs", child_id)
        if rec["state"] == "succeeded":
            return rec
    except NotFound:
        pass
    sub = SubRun(ctx.engine, {**ctx.job, "id": child_id, "kind": kind.name}, ctx.cancel_event, light=ctx.light,
                 lane=ctx.lane, parent=ctx, role=role)
    started_at, wall0, cpu0 = now(), time.monotonic(), time.thread_time()
    try:
        result = kind.run(sub, spec)
    except DomainError as e:
        raise JobFailed(e.code, f"{role}: {e.message}", e.details) from None
    finally:
        sub.release()
        ctx.cpu_s += sub.cpu_s
        for stage, nodes in sub.nodes.items():
            ctx.nodes[f"{role}: {stage}"] = nodes
    # Tasks' CPU (measured in their processes) and the driver's share (this thread: planning, the
    # selection's DuckDB pass run from it).
    cost = {"cpu_s": round(sub.cpu_s + time.thread_time() - cpu0, 2), "wall_s": round(time.monotonic() - wall0, 2)}
    result["summary"] = {**result.get("summary", {}), "part_of": ctx.job_id, "cost": cost}
    if sub.nodes:
        result["nodes"] = sub.nodes
    prefix = f"{role}: "
    stages = [{**s, "stage": s["stage"][len(prefix):]} for s in ctx._stages if s["stage"].startswith(prefix)]
    return ctx.catalog.insert("jobs", {
        "id": child_id, "tenant": ctx.tenant, "kind": kind.name, "name": f"{ctx.job.get('name') or 'compare'}: {role}",
        "state": "succeeded", "spec": spec.model_dump(mode="json"), "created_at": started_at,
        "started_at": started_at, "finished_at": now(), "attempts": 1, "result": result,
        "progress": {"stage": stages[-1]["stage"] if stages else None, "eta_s": 0.0, "stages": stages, "plan": [],
                     "input_docs": ctx.engine.input_docs(spec)}})


# -- the figures ---------------------------------------------------------------------------------

def paired_winner(gains: dict[str, list[float | None]], alpha: float = ALPHA) -> dict:
    """Which selector wins: the best by mean gain against the runner-up, by a one-sided paired t-test
    over the repeats (repeat r of both used the same proxy seed and, for the gain, the same random
    arm). The winner is named only when p < alpha; else "no clear winner"."""
    means = {n: float(np.mean(g)) for n, g in gains.items() if g and None not in g}
    if len(means) < 2:
        only = next(iter(means), None)
        return {"selector": None, "statement": "one selector: nothing to compare" if only else "no gains measured"}
    best, second = sorted(means, key=means.get, reverse=True)[:2]
    d = np.array(gains[best]) - np.array(gains[second])
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se > 0:
        t = mean / se
        p = float(stats.t.sf(t, n - 1))
    else:  # the same difference in every repeat
        t, p = (math.inf, 0.0) if mean > 0 else (0.0, 1.0)
    won = p < alpha
    test = (f"{best}'s gain is above {second}'s by {mean:.4f} ± {se:.4f} (paired over {n} repeats, one-sided "
            f"t = {t:.2f}, p = {p:.3g})")
    return {"selector": best if won else None, "best": best, "runner_up": second, "difference": mean,
            "difference_se": se, "t": t if math.isfinite(t) else None, "p_value": p, "repeats": n, "alpha": alpha,
            "statement": f"{best} wins: {test}" if won else f"no clear winner: {test}, not below {alpha}"}


def overlap_matrix(ctx: JobContext, manifests: dict[str, str], selected: dict[str, int]) -> dict:
    """|A ∩ B| / k for each pair of selections (k: the smaller of the two, the size asked for when
    both have it), by one DuckDB query per pair over the manifests."""
    names = list(manifests)
    out = {a: {a: 1.0 if selected[a] else None} for a in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ctx.check_cancelled()
            both = selection_overlap(ctx.store, manifest_files(ctx.store, manifests[a]),
                                     manifest_files(ctx.store, manifests[b]))["both"]
            k = min(selected[a], selected[b])
            out[a][b] = out[b][a] = both / k if k else None
    return out


def run_compare(ctx: JobContext, spec: CompareSpec) -> dict:
    for corpus in (spec.pool, spec.target, spec.validation):
        ctx.corpus(corpus)
    chosen = {name: sub_run(ctx, name, KINDS_OF[name], spec.selector_spec(name)) for name in spec.selectors}
    evaluations = {name: sub_run(ctx, f"evaluate {name}", EVALUATE,
                                 spec.evaluate_spec(job["result"]["manifest_id"]))
                   for name, job in chosen.items()}
    ctx.progress("overlap", 0, 1, "steps", force=True)
    rows, gains = [], {}
    for name in spec.selectors:
        sel, ev = chosen[name]["result"], evaluations[name]["result"]["summary"]
        gains[name] = ev.get("relative_gains") or [ev["relative_gain"]]
        rows.append({"selector": name, "gain": ev["relative_gain"], "gain_se": ev.get("relative_gain_se"),
                     "gains": gains[name], "validation_loss": ev["selection"]["validation_loss"],
                     "selected": sel["summary"]["num_selected"], "cpu_s": sel["summary"]["cost"]["cpu_s"],
                     "wall_s": sel["summary"]["cost"]["wall_s"], "manifest_id": sel["manifest_id"],
                     "job_id": chosen[name]["id"], "evaluate_job_id": evaluations[name]["id"],
                     "evaluate_cpu_s": ev["cost"]["cpu_s"], "evaluate_wall_s": ev["cost"]["wall_s"],
                     "random_arm": ev.get("random_arm"), "gain_flagged": ev.get("relative_gain_flagged")})
    overlap = overlap_matrix(ctx, {r["selector"]: r["manifest_id"] for r in rows},
                             {r["selector"]: r["selected"] for r in rows})
    ctx.progress("overlap", 1, 1, "steps", force=True)
    warnings = []
    if len({r["selected"] for r in rows}) > 1:
        warnings.append("the selections differ in size (" + ", ".join(f"{r['selector']} {r['selected']:,}" for r in rows)
                        + "): their random arms differ, so the gains are paired by proxy seed only")
    for r in rows:
        if r["gain_flagged"]:
            warnings.append(f"{r['selector']}'s selection overlaps the validation corpus: its gain is inflated "
                            f"(see job {r['evaluate_job_id']})")
    first = evaluations[spec.selectors[0]]["result"]["summary"]
    summary = {"table": rows, "overlap": overlap, "winner": paired_winner(gains),
               "random": {"validation_loss": first["random"]["validation_loss"],
                          "validation_losses": first["random"].get("validation_losses")},
               "repeats": spec.repeats, "proxy": spec.proxy.preset, "token_budget": spec.proxy.tokens,
               "select": spec.select.as_dict(), "match": spec.match,
               **({"built_on": list(spec.restrict)} if spec.restrict else {}),
               **({"warnings": warnings} if warnings else {})}
    return {"summary": summary}


@dataclass(frozen=True)
class CompareKind(JobKind):
    """compare's plan is its parts' plans, in the order they run, each stage named `<role>: <stage>`."""

    def plan(self, spec: CompareSpec) -> list[str]:
        out = []
        for name in spec.selectors:
            out += [f"{name}: {s}" for s in KINDS_OF[name].plan(spec.selector_spec(name))]
        for name in spec.selectors:
            out += [f"evaluate {name}: {s}" for s in EVALUATE.plan(spec.evaluate_spec("man_planned"))]
        return out + ["overlap"]


KINDS = [
    CompareKind("compare", CompareSpec, run_compare,
                "a bake-off: several selectors on one pool, target, restriction and size, each evaluated against "
                "the same random arm; gains ± standard error, overlaps, costs and the winner",
                stages={"overlap": BOOKKEEPING}, up_to=frozenset({"color_filter: finetune"})),
]
