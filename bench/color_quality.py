"""CoLoR-Filter quality on the real Debian corpus (not in CI).

Selects 10% of the pool toward the target domain (scripture) with CoLoR-Filter, DSIR and random,
through the real service, and reports each selection's precision and recall with respect to the
target domain, then `evaluate`'s validation loss: proxies trained from scratch with the same token
budget on each selection, measured on the held-out target validation set.

    .venv/bin/python -m bench.color_quality [--pool-docs 12000] [--prior-tokens 3000000]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from bench.common import debian_corpus, print_table, run_job, service, upload_file, write_json


def subsample(src: str, dst: str, n: int | None, seed: int = 0) -> str:
    rows = open(src).read().splitlines()
    if n and len(rows) > n:
        rows = random.Random(seed).sample(rows, n)
    with open(dst, "w") as f:
        f.write("\n".join(rows) + "\n")
    return dst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool-docs", type=int, default=12000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prior-tokens", type=int, default=3_000_000)
    ap.add_argument("--proxy-tokens", type=int, default=1_500_000)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()

    data = debian_corpus()
    work = tempfile.mkdtemp(prefix="thresher-bench-")
    pool_path = subsample(os.path.join(data, "pool.jsonl"), os.path.join(work, "pool.jsonl"), args.pool_docs)
    target_domain = "scripture"
    with service(os.path.join(work, "home")) as c:
        pool = upload_file(c, pool_path, "pool")
        target = upload_file(c, os.path.join(data, "target.jsonl"), "target")
        val = upload_file(c, os.path.join(data, "validation.jsonl"), "validation")
        in_pool = pool["sources"].get(target_domain, 0)
        select = {"fraction": args.fraction}
        train = {"preset": args.preset, "tokens": args.prior_tokens, "vocab_size": args.vocab}
        jobs = {
            "color_filter": ("color_filter", {"pool": pool["id"], "target": target["id"], "select": select,
                                              "prior": {"train": train}, "conditional": {"finetune": {}}}),
            "dsir": ("dsir", {"pool": pool["id"], "target": target["id"], "select": select}),
            "random": ("random", {"pool": pool["id"], "select": select}),
        }
        results = {}
        for name, (kind, spec) in jobs.items():
            t0 = time.monotonic()
            job = run_job(c, kind, spec)
            man = job["result"]["manifest_id"]
            by_source = job["result"]["summary"]["selected_by_source"]
            selected = sum(by_source.values())
            hit = by_source.get(target_domain, 0)
            ev = run_job(c, "evaluate", {"selection": man, "validation": val["id"],
                                         "proxy": {"preset": args.preset, "tokens": args.proxy_tokens,
                                                   "vocab_size": args.vocab}})
            s = ev["result"]["summary"]
            results[name] = {"selected": selected, "precision": hit / selected, "recall": hit / max(1, in_pool),
                             "by_source": by_source, "select_s": time.monotonic() - t0 - ev["wall_s"],
                             "val_loss": s["selection"]["validation_loss"],
                             "random_subset_val_loss": s["random"]["validation_loss"],
                             "relative_gain": s["relative_gain"]}
    rows = [[k, r["selected"], r["precision"], r["recall"], r["val_loss"], r["random_subset_val_loss"],
             r["relative_gain"], r["select_s"]] for k, r in results.items()]
    print_table(f"Selection of {args.fraction:.0%} toward '{target_domain}' ({in_pool} of {pool['num_docs']} pool docs; "
                f"best possible precision {min(1, in_pool / max(1, results['random']['selected'])):.2f})",
                ["method", "selected", "precision", "recall", "val_loss", "rand_val_loss", "gain", "select_s"], rows)
    write_json("color_quality", {"args": vars(args), "pool_docs": pool["num_docs"], "target_in_pool": in_pool,
                                 "results": results})


if __name__ == "__main__":
    main()
