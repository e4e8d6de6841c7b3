"""Projektor's accuracy on the real Debian corpus (not in CI).

Three sources (kernel docs, man pages, fortunes) are revealed as small samples; the target is the
scripture validation set. A `projection` job with automatic pilots trains proxy LMs at N0 and N1
on a simplex grid; then actual proxies (the same recipe, through the same Ray task) are trained on
held-out mixtures at 4×N1. Reported: the mean relative error of the projected validation loss
against the measured one, beside a fit on the same pilots that does not use OT.

    .venv/bin/python -m bench.projection_accuracy [--n0 100] [--n1 200] [--heldout 6]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import ray

from bench.common import debian_corpus, print_table, run_job, service, upload_file, write_json

SOURCES = ["kernel", "manpages", "fortunes"]
PROXY = {"preset": "tiny", "vocab_size": 1024, "batch_size": 16, "seq_len": 64,
         "architecture": {"n_layer": 1, "n_embd": 64, "n_head": 2, "context": 64}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--heldout", type=int, default=6)
    ap.add_argument("--grid", type=float, default=0.25)
    ap.add_argument("--revealed", type=int, default=1200, help="documents revealed per source")
    ap.add_argument("--repeats", type=int, default=3, help="proxies per pilot (median)")
    args = ap.parse_args()
    data = debian_corpus()
    work = tempfile.mkdtemp(prefix="thresher-proj-")
    for name in SOURCES:  # the revealed sample of each source
        rows = open(os.path.join(data, "sources", f"{name}.jsonl")).read().splitlines()[:args.revealed]
        open(os.path.join(work, f"{name}.jsonl"), "w").write("\n".join(rows) + "\n")
    auto = {"grid_step": args.grid, "epochs": 2, "validation_docs": 300, "proxy": PROXY, "repeats": args.repeats}
    big = 4 * args.n1
    rng = np.random.default_rng(0)
    heldout = [list(p) for p in rng.dirichlet(np.ones(3), size=args.heldout)]
    with service(os.path.join(work, "home")) as c:
        ids = [upload_file(c, os.path.join(work, f"{n}.jsonl"), n)["id"] for n in SOURCES]
        val = upload_file(c, os.path.join(data, "validation.jsonl"), "validation")["id"]
        spec = {"sources": [{"corpus": i, "price_per_doc": 1.0, "available_docs": args.revealed} for i in ids],
                "validation": val, "pilot_sizes": [args.n0, args.n1], "target_sizes": [big],
                "pilots": "auto", "metric": "loss", "auto": auto}
        job = run_job(c, "projection", spec)
        summary = job["result"]["summary"]
        pred = c.post(f"/v1/projections/{job['id']}/predict", json={"mixtures": heldout, "sizes": [big]}).json()
        predicted = [p["predicted"] for p in pred["predictions"]]

        # Measure the held-out mixtures at 4×N1 with the same proxy recipe, and refit without OT.
        from workers.jobs.projection import _fits, pilot_task
        svc = c.app.state.svc
        home = ("jobs", job["id"])
        source_parts = [[("corpora", i, n) for n in svc.store.list("corpora", i, suffix=".parquet")] for i in ids]
        val_parts = [("corpora", val, n) for n in svc.store.list("corpora", val, suffix=".parquet")]
        refs = [[pilot_task.remote(svc.store.root, source_parts, val_parts, (*home, "tokenizer.json"), big, mix,
                                   auto, (*home, "heldout", f"h{k}-{r}.json"), 1000 + 10 * k + r)
                 for r in range(args.repeats)] for k, mix in enumerate(heldout)]
        measured = [float(np.median([x["metric"] for x in ray.get(group)])) for group in refs]
        pilots = json.loads(svc.store.read_bytes(*home, "pilots.json"))
    from scoring.projektor import SizeProjection
    fits_ot, plain = _fits(pilots, [p["ot"] for p in pilots], [args.n0, args.n1])
    no_ot = SizeProjection(args.n0, plain[args.n0], args.n1, plain[args.n1])
    predicted_no_ot = [no_ot.predict(big, np.asarray(m)) for m in heldout]
    rel = lambda p, m: float(np.mean(np.abs(np.array(p) - np.array(m)) / np.array(m)))  # noqa: E731
    rows = [[", ".join(f"{x:.2f}" for x in mix), m, p, q] for mix, m, p, q in zip(heldout, measured, predicted, predicted_no_ot)]
    print_table(f"Held-out mixtures of {SOURCES} at N = {big} (pilots at {args.n0}, {args.n1}; target: scripture)",
                ["mixture", "measured", "projected (OT)", "projected (no OT)"], rows)
    err_ot, err_plain = rel(predicted, measured), rel(predicted_no_ot, measured)
    print_table("Mean relative error", ["fit", "error"], [["pseudo-quadratic OT", err_ot], ["no OT", err_plain]])
    print(f"fit quality: {json.dumps(summary['fit'])}")
    print(f"optimum: {summary['optimum']}")
    write_json("projection_accuracy", {"args": vars(args), "heldout": heldout, "measured": measured,
                                       "projected_ot": predicted, "projected_no_ot": predicted_no_ot,
                                       "mean_rel_error_ot": err_ot, "mean_rel_error_no_ot": err_plain,
                                       "fit": summary["fit"], "optimum": summary["optimum"],
                                       "pilots": pilots, "job_wall_s": job["wall_s"]})


if __name__ == "__main__":
    main()
