"""`projection` (docs/methods.md §5, Projektor): predict the metric of a model trained on any mixture
of data sources at any size, from small revealed samples, choose the best mixture and plan the
purchase under a budget.

Stages: embed the revealed samples and the validation set (hashed TF-IDF, or an auxiliary model's
mean-pooled hidden states) → pilot metrics (measured by the user, or proxy LMs trained on Ray at the
two pilot sizes on a simplex grid of mixtures) → OT of every pilot mixture (in parallel) → one fit
per pilot size, the log-N projection, the optimum and the purchase plan, a predictions manifest and
a plot. Every stage's output is a file in the job's folder, so a restarted job resumes.
"""
from __future__ import annotations

import io
import json
import math
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import ray
import torch
from pydantic import Field, field_validator, model_validator
from tokenizers import Tokenizer

from scoring.embed import Embedder, mean_pooled_embeddings
from scoring.lm_loss import tokenize_documents
from scoring.projektor import (MixtureOT, PseudoQuadraticNoOT, PseudoQuadraticOT, SizeProjection,
                               fit_from_state, plan_purchase)
from scoring.tokenizer import eos_id, train_tokenizer
from scoring.train import EarlyStopping, validation_loss
from storage import layout
from storage.fs import Store
from storage.manifests import write_table_manifest
from workers.driver.engine import JobContext, JobFailed, Task, on_ray, stop_when_gone
from workers.jobs.common import manifest_id, model_record
from workers.jobs.restrict import restriction
from workers.kind import SHARD_TASK, JobKind
from workers.models import load_for_scoring, read_texts
from workers.specs import (MAX_COUNT, CorpusId, Docs, LimitExceeded, ModelId, Records, Restricted, Seed, SpecLimits,
                           StrictModel, check_source_value)
from workers.training import MAX_TRAIN_DOCS, TrainOptions, check_train_tokens, train_from_scratch

# Bounds of the spec, from what the method can use:
# - The fit has 4·m + 1 coefficients for m sources: 64 sources need 257 pilots a size, past the
#   default THRESHER_MAX_PROJECTION_MIXTURES.
MAX_SOURCES = 64
# - Every revealed point of every source is a row of the OT cost matrices (8·n² bytes each, a few
#   alive at once in Sinkhorn): 10,000 points are 800 MB a matrix.
MAX_OT_POINTS = 10_000
# - Entropic regularisation, relative to the mean cost. Below 5e-3 Sinkhorn in float64 leaves the
#   kernel's range (C/ε > 600 for embeddings whose costs spread to a few times their mean), falls
#   back to the log domain and does not converge in its 10,000 iterations: on 900 points 5e-3
#   converged in 0.9 s, 1e-3 had not converged after 2,000 iterations and 46 s, and 1e-300 ran for
#   at least 26 minutes. Above 100 the divergence is its large-ε limit (measured: unchanged from 100 to 1e4).
MIN_REG, MAX_REG = 5e-3, 100.0
# - Target sizes: each is a projected-gradient optimisation of the mixture (up to 100 OT solves).
MAX_TARGET_SIZES = 32
# - A metric is a loss or an accuracy; the fits square it.
MAX_METRIC = 1e6
MAX_PRICE, MAX_BUDGET = 1e9, 1e21  # with at most 1e12 documents a source, every cost stays finite


class Source(Restricted):
    pool_field: ClassVar[str] = "corpus"
    corpus: CorpusId
    source: str | None = Field(None, min_length=1, description=(
        "only the corpus's documents whose `source` is this value: each source of a pool becomes a "
        "projection source without being uploaded as a corpus of its own"))
    price_per_doc: float = Field(ge=0, le=MAX_PRICE)
    available_docs: Docs

    def check_records(self, records: Records, field: str) -> None:
        if self.source is not None:
            check_source_value(records.record("corpora", self.corpus), self.source, f"{field}.source")


def simplex_problem(p: list[float]) -> str | None:
    """Why p is not a mixture (non-negative weights summing to 1), or None."""
    if not all(math.isfinite(x) and x >= 0 for x in p):
        return "mixture weights must be finite and non-negative"
    if abs(sum(p) - 1.0) > 1e-6:
        return f"mixture must sum to 1, not {sum(p):.6g}"
    return None


class Pilot(StrictModel):
    """A measured pilot: the metric of a model trained on `size` documents mixed as `mixture`."""
    size: Docs
    mixture: list[float]
    metric: float = Field(ge=-MAX_METRIC, le=MAX_METRIC)

    @field_validator("mixture")
    @classmethod
    def _on_simplex(cls, p):
        problem = simplex_problem(p)
        if problem:
            raise ValueError(problem)
        return p


class Embedding(StrictModel):
    kind: Literal["hashed", "model"] = "hashed"
    model: ModelId | None = Field(None, description="with kind=model: a trained model's mean-pooled hidden states")
    dim: int = Field(256, ge=8, le=4096)
    max_points_per_source: int = Field(400, ge=10, le=5000)
    validation_points: int = Field(400, ge=10, le=5000)

    @model_validator(mode="after")
    def _model_given(self):
        if (self.kind == "model") != (self.model is not None):
            raise ValueError("kind=model needs model, and only it")
        return self


class PilotEarlyStopping(StrictModel):
    """Evaluate each proxy on the validation set every `every_tokens` and stop it after `patience`
    evaluations without improvement; its metric is the best validation loss it reached."""
    every_tokens: int = Field(100_000, ge=1000, le=MAX_COUNT)
    patience: int = Field(3, ge=1, le=100)


class AutoPilots(StrictModel):
    """How `pilots: "auto"` measures them: proxy LMs trained from scratch on each mixture."""
    grid_step: float = Field(0.25, ge=1e-3, le=1, description=(
        "simplex grid spacing of the pilot mixtures; the fit has 4·m + 1 coefficients for m sources, so "
        "for 3 sources a 1/6 grid (28 mixtures) fits better than 0.25 (15) with two repeats, at the same cost. "
        "The grid has C(1/step + m − 1, m − 1) mixtures, at most THRESHER_MAX_PROJECTION_MIXTURES"))
    proxy: TrainOptions = TrainOptions(vocab_size=2048)
    epochs: float = Field(2.0, gt=0, le=100, description="passes over each pilot's documents (when tokens is unset)")
    tokens: int | None = Field(None, ge=1000, description=(
        "the same training budget (tokens) for every proxy, whatever its size: then a proxy's metric "
        "reflects its data, not how long it trained; give a few passes over the largest size predicted"))
    repeats: int = Field(1, ge=1, le=10, description="proxies per pilot (different data draws and seeds); "
                                                     "the pilot's metric is their median")
    validation_docs: int = Field(300, ge=10, le=100_000)
    early_stopping: PilotEarlyStopping | None = Field(None, description=(
        "stop each proxy when its validation loss stops improving (the budget is then a maximum): a "
        "proxy's metric is the best it reached on its data, neither undertrained nor overfitted"))


    def check_limits(self, limits: SpecLimits, field: str) -> None:
        check_train_tokens(self.tokens, limits, f"{field}.tokens")


class ProjectionSpec(StrictModel):
    sources: list[Source] = Field(min_length=2, max_length=MAX_SOURCES)
    validation: CorpusId
    pilot_sizes: list[Docs] = Field(description="the two pilot sizes N0 < N1 (documents)")
    target_sizes: list[Docs] = Field(min_length=1, max_length=MAX_TARGET_SIZES)
    pilots: Literal["auto"] | list[Pilot] = "auto"
    metric: Literal["loss", "accuracy"] = "loss"
    budget: float | None = Field(None, ge=0, le=MAX_BUDGET)
    embedding: Embedding = Embedding()
    auto: AutoPilots = AutoPilots()
    reg: float = Field(1e-2, ge=MIN_REG, le=MAX_REG, description=(
        f"entropic regularisation, relative to the mean cost ({MIN_REG:g} to {MAX_REG:g}: below, Sinkhorn "
        "does not converge in float64)"))
    seed: Seed = 0

    @field_validator("pilot_sizes")
    @classmethod
    def _two_sizes(cls, v):
        if len(v) != 2 or not 0 < v[0] < v[1]:
            raise ValueError("give exactly two pilot sizes N0 < N1")
        return v

    @model_validator(mode="after")
    def _pilots_fit_sources(self):
        points = len(self.sources) * self.embedding.max_points_per_source
        if points > MAX_OT_POINTS:
            raise ValueError(f"{len(self.sources)} sources × embedding.max_points_per_source "
                             f"{self.embedding.max_points_per_source} is {points:,} points; the OT takes at most "
                             f"{MAX_OT_POINTS:,}")
        if self.pilots == "auto":
            if self.metric != "loss":
                raise ValueError("automatic pilots measure validation loss: use metric=loss, or give measured pilots")
            if self.pilot_sizes[1] > MAX_TRAIN_DOCS:
                raise ValueError(f"an automatic pilot trains on its documents in memory: pilot sizes of at most "
                                 f"{MAX_TRAIN_DOCS:,} documents")
            return self
        for i, p in enumerate(self.pilots):
            if len(p.mixture) != len(self.sources):
                raise ValueError(f"pilots[{i}].mixture has {len(p.mixture)} weights for {len(self.sources)} sources")
            if p.size not in self.pilot_sizes:
                raise ValueError(f"pilots[{i}].size {p.size} is not one of pilot_sizes {self.pilot_sizes}")
        for n in self.pilot_sizes:
            if sum(p.size == n for p in self.pilots) < 2:
                raise ValueError(f"pilot size {n} needs at least 2 measured pilots")
        return self

    def check_limits(self, limits: SpecLimits, field: str) -> None:
        m, most = len(self.sources), limits.max_projection_mixtures
        if self.pilots == "auto":
            n = grid_size(m, self.auto.grid_step)
            if n > most:
                raise LimitExceeded(f"{field}.auto.grid_step", f"a grid step of {self.auto.grid_step:g} over {m} "
                                    f"sources makes {n:,} pilot mixtures", most, "THRESHER_MAX_PROJECTION_MIXTURES")
            return
        for size in self.pilot_sizes:
            n = sum(p.size == size for p in self.pilots)
            if n > most:
                raise LimitExceeded(f"{field}.pilots", f"{n:,} measured pilots at size {size}", most,
                                    "THRESHER_MAX_PROJECTION_MIXTURES")


def grid_divisions(step: float) -> int:
    return max(1, round(1 / step))


def grid_size(m: int, step: float) -> int:
    """The number of mixtures on the simplex grid, C(k + m − 1, m − 1) with k = 1/step, in closed
    form: the spec is bounded by it before a single mixture is made."""
    return math.comb(grid_divisions(step) + m - 1, m - 1)


def simplex_grid(m: int, step: float) -> list[list[float]]:
    """The mixtures c/k with c ≥ 0 integers summing to k, in lexicographic order of c (the order
    pilots are numbered in, so a resumed job finds its own). Made directly, in time proportional
    to their number (call it after bounding grid_size)."""
    k = grid_divisions(step)

    def parts(total: int, n: int):
        if n == 1:
            yield (total,)
            return
        for first in range(total + 1):
            for rest in parts(total - first, n - 1):
                yield (first, *rest)
    return [[c / k for c in combo] for combo in parts(k, m)]


# -- Ray tasks -----------------------------------------------------------------------------------

def revealed_texts(store: Store, src: dict, max_docs: int | None, seed: int, allowed: list | None = None) -> list[str]:
    """A projection source's texts: its corpus's shards (`parts`), only the documents whose
    `source` is `source` when one is named, and (`allowed`, per shard a mask or None) only the rows
    its restriction allows."""
    return read_texts(store, src["parts"], max_docs, seed, allowed, source=src["source"])


def _save_npz(store: Store, arrays: dict, *parts) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    store.write_bytes(buf.getvalue(), *parts)


def _load_npz(store: Store, *parts) -> dict:
    with np.load(io.BytesIO(store.read_bytes(*parts))) as z:
        return {k: z[k] for k in z.files}


def embed_task(store: Store, sources: list[dict], validation_parts: list, opts: dict, model: dict | None,
               out: tuple, seed: int, allowed: list | None) -> None:
    o = Embedding.model_validate(opts)
    texts = [revealed_texts(store, src, o.max_points_per_source, seed + i, allowed and allowed[i])
             for i, src in enumerate(sources)]
    val = read_texts(store, validation_parts, o.validation_points, seed)
    if o.kind == "hashed":
        emb = Embedder(dim=o.dim, seed=seed).fit([t for ts in texts for t in ts] + val)
        arrays = [emb.transform(ts) for ts in texts] + [emb.transform(val)]
    else:
        lm, tokenizer, prepend = load_for_scoring(store, model, device="cpu")
        if not hasattr(lm, "hidden"):
            raise JobFailed("unsupported_model", "model embeddings need a model trained by Thresher")

        def embed(ts):
            return mean_pooled_embeddings(lm.hidden, tokenize_documents(tokenizer, ts, prepend_id=prepend),
                                          max_len=lm.context)
        arrays = [embed(ts) for ts in texts] + [embed(val)]
    _save_npz(store, {**{f"source{i}": a for i, a in enumerate(arrays[:-1])}, "validation": arrays[-1]}, *out)


@ray.remote(max_retries=2)
def shared_tokenizer_task(store_root: str, sources: list[dict], out: tuple, vocab_size: int, seed: int,
                          allowed: list | None = None) -> None:
    store = Store(store_root)
    texts = [t for i, src in enumerate(sources) for t in revealed_texts(store, src, 3000, seed + i, allowed and allowed[i])]
    store.write_bytes(train_tokenizer(texts, vocab_size=vocab_size).to_str().encode(), *out)


def pilot_documents(pools: list[list[str]], counts, seed: int) -> list[str]:
    """counts[i] documents of each source pool. Pilots of one mixture and draw at both sizes share
    `seed`, so the smaller pilot's documents are a subset of the larger's (and training starts from
    the same weights): Stage 2 extrapolates the difference between the sizes (×2 from N1 to 4×N1
    when N1 = 2·N0), and common random numbers keep luck of the draw out of that difference."""
    texts: list[str] = []
    for i, (pool, n) in enumerate(zip(pools, counts)):
        if n == 0:
            continue
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(len(pool))
        # A revealed sample smaller than the pilot's share: all of it, the rest drawn with replacement.
        pick = order[:n] if n <= len(pool) else np.concatenate([order, rng.choice(len(pool), n - len(pool))])
        texts += [pool[j] for j in pick]
    return texts


@ray.remote(max_retries=2)
def pilot_task(store_root: str, sources: list[dict], validation_parts: list, tokenizer_file: tuple, size: int,
               mixture: list[float], opts: dict, out: tuple, seed: int, lifeline=None,
               max_tokens: int | None = None, allowed: list | None = None) -> dict:
    """Train a proxy LM from scratch on `size` documents mixed as `mixture`; its validation loss.
    `seed` fixes the draw (see pilot_documents) and the training randomness; a budget in passes
    trains at most `max_tokens`. Stops once the job's `lifeline` is gone."""
    torch.set_num_threads(1)
    store = Store(store_root)
    o = AutoPilots.model_validate(opts)
    tokenizer = Tokenizer.from_str(store.read_bytes(*tokenizer_file).decode())
    counts = np.floor(np.asarray(mixture) * size + 1e-9).astype(int)
    pools = [revealed_texts(store, src, None, 0, allowed and allowed[i]) if n else []
             for i, (src, n) in enumerate(zip(sources, counts))]
    texts = pilot_documents(pools, counts, seed)
    val = tokenize_documents(tokenizer, read_texts(store, validation_parts, o.validation_docs, 0),
                             prepend_id=eos_id(tokenizer))
    stop = o.early_stopping
    rule = (lambda model: EarlyStopping(lambda: validation_loss(model, val), stop.every_tokens, stop.patience)) \
        if stop else None
    proxy = o.proxy.model_copy(update={"seed": seed, "tokens": o.tokens or o.proxy.tokens})
    model, stats = train_from_scratch(tokenizer, texts, proxy, epochs=None if o.tokens is not None else o.epochs,
                                      max_tokens=max_tokens, early_stopping=rule, on_progress=stop_when_gone(lifeline))
    loss = stats["best_eval"] if rule else validation_loss(model, val)
    result = {"size": size, "mixture": list(mixture), "metric": loss, "train_tokens": stats["stream_tokens"],
              "seen_tokens": int(stats["tokens"])}
    if rule:
        result["best_tokens"] = int(stats["best_tokens"])
    store.write_bytes(json.dumps(result).encode(), *out)
    return result


def ot_task(store: Store, chunk: int, mixtures: list[list[float]], out: tuple | None, embeddings: tuple,
            reg: float) -> list[float]:
    """The OT divergence of each mixture of one chunk to the validation set."""
    arrays = _load_npz(store, *embeddings)
    m = len(arrays) - 1
    ot_fn = MixtureOT([arrays[f"source{i}"] for i in range(m)], arrays["validation"], reg=reg)
    return [ot_fn(np.asarray(p))[0] for p in mixtures]


def fit_per_size(pilots: list[dict], ot_values: list[float], sizes: list[int]):
    """One fit per pilot size, with and without OT. The ridge penalty (0 included) is always chosen
    by exact leave-one-out error: pilots are noisy proxies, and on the Debian bench plain least
    squares over 12 features and 15 pilots halved the leave-one-out accuracy."""
    fits, plain = {}, {}
    for n in sizes:
        rows = [i for i, p in enumerate(pilots) if p["size"] == n]
        P = [pilots[i]["mixture"] for i in rows]
        y = [pilots[i]["metric"] for i in rows]
        fits[n] = PseudoQuadraticOT(ridge="loo").fit(P, y, np.asarray([ot_values[i] for i in rows]))
        plain[n] = PseudoQuadraticNoOT(ridge="loo").fit(P, y)
    return fits, plain


def fit_and_plan_task(store: Store, job_id: str, spec: dict, pilots: list[dict], ot_values: list[float],
                      names: list[str], man_id: str) -> dict:
    """Fit per pilot size, project in log N, optimise the mixture, plan the purchase, write the
    predictions manifest, the fitted projection (for /predict) and the plot."""
    s = ProjectionSpec.model_validate(spec)
    N0, N1 = s.pilot_sizes
    arrays = _load_npz(store, *layout.job_file(job_id, "embeddings"))
    m = len(s.sources)
    ot_fn = MixtureOT([arrays[f"source{i}"] for i in range(m)], arrays["validation"], reg=s.reg)
    fits, plain = fit_per_size(pilots, ot_values, s.pilot_sizes)
    proj = SizeProjection(N0, fits[N0], N1, fits[N1], ot_fn)
    maximise = s.metric == "accuracy"
    prices = np.array([x.price_per_doc for x in s.sources])
    available = np.array([x.available_docs for x in s.sources], dtype=np.float64)
    plan = plan_purchase(proj.predict, proj.grad, prices=prices, available=available, budget=s.budget,
                         candidate_sizes=sorted(set(s.target_sizes)), maximise=maximise)
    state = {"N0": N0, "N1": N1, "reg": s.reg, "fits": {str(n): fits[n].state_dict() for n in (N0, N1)}}
    store.write_bytes(json.dumps(state).encode(), *layout.job_file(job_id, "projection"))

    # Predictions: every pilot mixture, the optimum, uniform and each single source, at every size.
    uniform = [1.0 / m] * m
    labelled = [("optimum", plan["mixture"]), ("uniform", uniform)] + \
        [(f"single:{names[i]}", [float(i == j) for j in range(m)]) for i in range(m)]
    measured = {(p["size"], tuple(np.round(p["mixture"], 9))): p["metric"] for p in pilots}
    rows = []
    sizes = sorted(set(s.target_sizes) | set(s.pilot_sizes) | {plan["size"]})
    for i, p in enumerate(pilots):
        rows.append(("pilot", p["size"], p["mixture"], proj.predict(p["size"], np.asarray(p["mixture"])), p["metric"]))
    for label, mix in labelled:
        for n in sizes:
            rows.append((label, n, mix, proj.predict(n, np.asarray(mix)), measured.get((n, tuple(np.round(mix, 9))))))
    table = pa.table({"label": [r[0] for r in rows], "size": pa.array([r[1] for r in rows], pa.int64()),
                      "mixture": pa.array([list(map(float, r[2])) for r in rows], pa.list_(pa.float64())),
                      "predicted": [float(r[3]) for r in rows],
                      "measured": pa.array([r[4] for r in rows], pa.float64())})
    info = write_table_manifest(store, table, man_id)
    store.write_bytes(_plot(proj, plan, pilots, labelled, names, s, sizes), *layout.job_file(job_id, "plot"))

    best_single = plan["baselines"]["best_single_source"]
    summary = {
        "fit": {str(n): {**fits[n].diagnostics(), "no_ot": plain[n].diagnostics()} for n in s.pilot_sizes},
        "optimum": {k: plan[k] for k in ("size", "mixture", "predicted", "docs_per_source", "cost")},
        "baselines": {
            "uniform": plan["baselines"]["uniform"],
            "best_single_source": None if best_single is None else
            {**best_single, "source": s.sources[best_single["source"]].corpus, "name": names[best_single["source"]]}},
        "metric": s.metric,
        "predictions": [{"size": n, "optimum": proj.predict(n, np.asarray(plan["mixture"])),
                         "uniform": proj.predict(n, np.asarray(uniform))} for n in sorted(set(s.target_sizes))],
    }
    return {"manifest": info, "summary": summary}


def _plot(proj, plan, pilots, labelled, names, spec, sizes) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = np.geomspace(min(sizes), max(sizes) * 1.05, 60)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, mix in labelled:
        style = {"optimum": dict(lw=2.5, color="black"), "uniform": dict(lw=1.8, ls="--", color="tab:blue")}.get(
            label, dict(lw=1.2, alpha=0.8))
        ax.plot(grid, [proj.predict(n, np.asarray(mix)) for n in grid], label=label.replace("single:", "only "), **style)
    ax.scatter([p["size"] for p in pilots], [p["metric"] for p in pilots], s=14, color="tab:red", zorder=3,
               label="pilots (measured)")
    ax.axvline(plan["size"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("documents (N)")
    ax.set_ylabel(f"projected validation {spec.metric}")
    ax.set_title("Projektor: projected metric by mixture and size")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- the job -------------------------------------------------------------------------------------

def source_masks(ctx: JobContext, sources: list[Source]):
    """Per source, per shard, the rows its `restrict` allows (or None), in the object store once
    for every task; None when no source is restricted."""
    if not any(src.restrict for src in sources):
        return None
    masks = []
    for src in sources:
        r = restriction(ctx, src.corpus, src.restrict)
        masks.append(r.masks([s for s, _ in ctx.corpus_shards(src.corpus)]))
    return ray.put(masks)


def run_projection(ctx: JobContext, spec: ProjectionSpec) -> dict:
    for i, src in enumerate(spec.sources):
        corpus = ctx.corpus(src.corpus)
        if src.source is not None:
            check_source_value(corpus, src.source, f"spec.sources.{i}.source")
    ctx.corpus(spec.validation)
    source_parts = [{"parts": [p for _, p in ctx.corpus_shards(src.corpus)], "source": src.source}
                    for src in spec.sources]
    allowed = source_masks(ctx, spec.sources)
    val_parts = [p for _, p in ctx.corpus_shards(spec.validation)]
    model = model_record(ctx, spec.embedding.model) if spec.embedding.model else None
    emb_file = layout.job_file(ctx.job_id, "embeddings")
    ctx.run_one("embed", embed_task, source_parts, val_parts, spec.embedding.model_dump(), model, emb_file, spec.seed,
                allowed, out=emb_file)

    if spec.pilots == "auto":
        tok_file = layout.job_file(ctx.job_id, "tokenizer")
        ctx.run_tasks("tokenizer", [Task(out=tok_file, key="tok", submit=lambda: shared_tokenizer_task.options(
            **ctx.options("tokenizer")).remote(
            ctx.store.root, source_parts, tok_file, spec.auto.proxy.vocab_size, spec.seed, allowed))], unit="steps")
        mixtures = simplex_grid(len(spec.sources), spec.auto.grid_step)
        # One draw seed per (mixture, repeat), the same at both sizes (see pilot_documents).
        runs = [(n, mix, spec.seed + j * spec.auto.repeats + r) for n in spec.pilot_sizes
                for j, mix in enumerate(mixtures) for r in range(spec.auto.repeats)]
        tasks = []
        for k, (n, mix, draw) in enumerate(runs):
            out = layout.pilot_result(ctx.job_id, k)
            tasks.append(Task(out=out, key=k, submit=lambda n=n, mix=mix, out=out, draw=draw: pilot_task.options(
                **ctx.options("pilots")).remote(ctx.store.root, source_parts, val_parts, tok_file, n, mix,
                                             spec.auto.model_dump(), out, draw, ctx.lifeline(),
                                             ctx.config.limits.max_train_tokens, allowed)))
        ctx.run_tasks("pilots", tasks, unit="proxies")
        measured = [json.loads(ctx.store.read_bytes(*t.out)) for t in tasks]
        proxies = proxy_report(measured) if spec.auto.early_stopping else None
        pilots = []
        for i in range(0, len(measured), spec.auto.repeats):
            group = measured[i:i + spec.auto.repeats]
            pilots.append({**group[0], "metric": float(np.median([g["metric"] for g in group])),
                           "repeats": [g["metric"] for g in group]})
    else:
        pilots = [p.model_dump() for p in spec.pilots]
        proxies = None

    chunks = [[p["mixture"] for p in pilots[i:i + 8]] for i in range(0, len(pilots), 8)]
    ot_chunks = ctx.map_shards("ot", ot_task, enumerate(chunks), emb_file, spec.reg, unit="chunks")
    ot_values = [v for i in range(len(chunks)) for v in ot_chunks[i]]

    man_id = manifest_id(ctx)
    names = [ctx.corpus(src.corpus)["name"] + (f":{src.source}" if src.source is not None else "")
             for src in spec.sources]
    out = ctx.run_one("fit", fit_and_plan_task, ctx.job_id, spec.model_dump(), pilots, ot_values, names, man_id)
    for p, v in zip(pilots, ot_values):
        p["ot"] = v
    ctx.store.write_bytes(json.dumps(pilots).encode(), *layout.job_file(ctx.job_id, "pilots"))
    ctx.commit_manifest(man_id, "projection", out["manifest"])
    summary = {**out["summary"],
               "warnings": fit_warnings(out["summary"]["fit"], spec) + (budget_warnings(proxies) if proxies else [])}
    if proxies is not None:
        summary["proxies"] = proxies
    return {"manifest_id": man_id, "summary": summary}


def proxy_report(runs: list[dict]) -> dict[str, dict]:
    """Per pilot size, where early stopping found the proxies' best validation loss, and how many
    had it at their very last evaluation: those were still improving when the budget ran out, so
    their loss says how far the budget got, not what their data allows, and Stage 2 extrapolates
    that bias."""
    report = {}
    for n in sorted({r["size"] for r in runs}):
        group = [r for r in runs if r["size"] == n]
        best = [r["best_tokens"] for r in group]
        report[str(n)] = {"proxies": len(group), "best_tokens_median": int(np.median(best)),
                          "best_tokens_max": max(best),
                          "still_improving": sum(r["best_tokens"] == r["seen_tokens"] for r in group)}
    return report


def fit_warnings(fit: dict[str, dict], spec: ProjectionSpec) -> list[str]:
    """A sentence for each pilot size whose fit has fewer pilots than coefficients, with what to
    change: a finer automatic grid (repeats do not add pilots: a pilot is their median), or more
    measured pilots."""
    out = []
    for n, f in fit.items():
        if not f["underdetermined"]:
            continue
        need, m = f["num_coefficients"], len(spec.sources)
        if spec.pilots == "auto":
            k = next(k for k in range(1, need + 1) if math.comb(k + m - 1, m - 1) >= need)
            fix = (f"use auto.grid_step {1 / k:.3g} ({math.comb(k + m - 1, m - 1)} mixtures over {m} sources) "
                   f"for a fit the pilots determine")
        else:
            fix = f"measure at least {need} pilots at each size for a fit the pilots determine"
        loo = "not measurable" if f["loo_mae"] is None else f"{f['loo_mae']:.3g}"
        out.append(f"At N = {n} the fit has {need} coefficients but only {f['num_pilots']} pilots: it can pass "
                   f"through every pilot whatever the truth, so R² says nothing and is not reported; its "
                   f"leave-one-out error is {loo}; {fix}")
    return out


def budget_warnings(report: dict[str, dict]) -> list[str]:
    return [f"{r['still_improving']} of {r['proxies']} proxies at N = {n} were still improving when "
            f"their budget ran out: their loss reflects the budget, not the data; raise auto.tokens (or auto.epochs)"
            for n, r in report.items() if r["still_improving"]]


def predict_task(store: Store, job_id: str, mixtures: list[list[float]], sizes: list[int]) -> list[dict]:
    saved = json.loads(store.read_bytes(*layout.job_file(job_id, "projection")))
    arrays = _load_npz(store, *layout.job_file(job_id, "embeddings"))
    m = len(arrays) - 1
    ot_fn = MixtureOT([arrays[f"source{i}"] for i in range(m)], arrays["validation"], reg=saved["reg"])
    N0, N1 = saved["N0"], saved["N1"]
    proj = SizeProjection(N0, fit_from_state(saved["fits"][str(N0)]), N1, fit_from_state(saved["fits"][str(N1)]), ot_fn)
    return [{"size": n, "mixture": mix, "predicted": float(proj.predict(n, np.asarray(mix)))}
            for mix in mixtures for n in sizes]


def predict(store: Store, job_id: str, mixtures: list[list[float]], sizes: list[int]) -> list[dict]:
    """Predictions of a finished projection job for new mixtures and sizes (runs on Ray)."""
    return ray.get(on_ray(predict_task, store.root, job_id, mixtures, sizes, max_retries=1))


KINDS = [JobKind("projection", ProjectionSpec, run_projection,
                 "Projektor: project the metric of data mixtures and plan a purchase under a budget",
                 # Pilot proxies are small: one core each, as many in parallel as the cluster has.
                 stages={s: SHARD_TASK for s in ("embed", "tokenizer", "pilots", "ot", "fit")},
                 skip={s: (lambda spec: spec.pilots != "auto") for s in ("tokenizer", "pilots")})]
