"""What a validation leak does to `evaluate`'s gain, and what decontaminating first does (issue 29).

On the Debian corpus (bench/build_debian_corpus.py): the pool (sampled to --pool-docs) with the
validation documents added to it, DSIR toward the target domain (scripture) selecting --fraction
of the pool, and `evaluate` against those validation documents; then the same after
`decontaminate` of the pool against the validation corpus, the selection restricted by it
(`restrict`); and, for reference, the pool without the validation documents at all. Reports per
run the selection's leaked documents, evaluate's relative gain, its contamination figures and
whether it flagged the gain.

    .venv/bin/python -m bench.evaluate_leak [--pool-docs 13000] [--fraction 0.02] [--proxy-tokens 300000] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from bench.color_quality import read_jsonl, write_jsonl
from bench.common import debian_corpus, print_table, run_job, service, upload_file, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-docs", type=int, default=13_000)
    ap.add_argument("--validation-docs", type=int, default=300)
    ap.add_argument("--fraction", type=float, default=0.02)
    ap.add_argument("--proxy-tokens", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = debian_corpus()
    pool = read_jsonl(os.path.join(data, "pool.jsonl"))
    if len(pool) > args.pool_docs:
        pool = random.Random(args.seed).sample(pool, args.pool_docs)
    validation = read_jsonl(os.path.join(data, "validation.jsonl"))[:args.validation_docs]
    leaks = [{**v, "id": f"leak-{v['id']}"} for v in validation]
    leaky = random.Random(args.seed + 1).sample(pool + leaks, len(pool) + len(leaks))   # shuffled in
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as home, service(home) as c:
        val = upload_file(c, write_jsonl(os.path.join(home, "validation.jsonl"), validation), "validation")
        target = upload_file(c, os.path.join(data, "target.jsonl"), "target")
        pools = {"clean": upload_file(c, write_jsonl(os.path.join(home, "clean.jsonl"), pool), "clean"),
                 "leaky": upload_file(c, write_jsonl(os.path.join(home, "leaky.jsonl"), leaky), "leaky")}
        decon = run_job(c, "decontaminate", {"pool": pools["leaky"]["id"], "against": [val["id"]]})
        plans = [("pool without the validation documents", "clean", []),
                 ("pool with them (leak)", "leaky", []),
                 ("the leaky pool, decontaminated first", "leaky", [decon["result"]["manifest_id"]])]
        for label, which, restrict in plans:
            t0 = time.monotonic()
            sel = run_job(c, "dsir", {"pool": pools[which]["id"], "target": target["id"], "seed": args.seed,
                                      "select": {"fraction": args.fraction}, "restrict": restrict})
            man = sel["result"]["manifest_id"]
            leaked = c.post("/v1/query", json={"sql": "SELECT count(*) FROM m WHERE selected AND doc_id LIKE 'leak-%'",
                                               "tables": {"m": man}}).json()["rows"][0][0]
            ev = run_job(c, "evaluate", {"selection": man, "validation": val["id"], "seed": args.seed,
                                         "repeats": args.repeats,
                                         "proxy": {"preset": "tiny", "tokens": args.proxy_tokens}})["result"]["summary"]
            cont = ev["contamination"]
            runs[label] = {"selected": sel["result"]["summary"]["num_selected"], "leaked_selected": leaked,
                           "relative_gain": ev["relative_gain"], "relative_gain_se": ev.get("relative_gain_se"),
                           "flagged": ev["relative_gain_flagged"], "contamination": cont,
                           "warnings": ev["warnings"], "seconds": round(time.monotonic() - t0, 1)}
            rows.append([label, runs[label]["selected"], leaked, f"{cont['selection']['fraction']:.1%}",
                         f"{cont['random']['fraction']:.1%}", f"{ev['relative_gain']:+.2%}", ev["relative_gain_flagged"]])
    print_table(f"DSIR {args.fraction:.0%} of {len(pool):,} Debian documents (+{len(leaks)} validation documents "
                f"where leaked), evaluate with tiny proxies of {args.proxy_tokens:,} tokens",
                ["pool", "selected", "validation docs selected", "selection overlap", "random overlap",
                 "relative gain", "flagged"], rows)
    write_json("evaluate_leak", {"args": vars(args), "runs": runs, "cpus": os.cpu_count(),
                                 "load": os.getloadavg()})


if __name__ == "__main__":
    main()
