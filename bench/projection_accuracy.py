"""Projektor's accuracy on the real Debian corpus (not in CI).

Three sources are revealed as small samples; the target is the scripture validation set. A
`projection` job with automatic pilots trains proxy LMs at N0 and N1 on a simplex grid (defaults:
50 and 200 documents, a 1/6 grid of 28 mixtures, one proxy each); then actual
proxies (the same recipe, through the same Ray task) are trained on held-out mixtures at 4×N1, drawn
from the whole sources (what a buyer would get), not only the revealed samples. The proxy recipe
(defaults: 2 blocks, 128 wide, at most 6M tokens, early stopping on validation loss every 100k
tokens with patience 2) gives every proxy the same chance: none is undertrained (it may train up to
the budget) nor overfitted (it keeps its best validation loss), so what differs between proxies is
their data. `--stop-every 0` trains the whole budget; `--epochs` trains for passes over a proxy's
own documents. (A 1-block, 64-wide proxy saturates: its loss barely moves from 2×N0 on, and the
log-N line overshoots.) Reported:
the mean relative error of the projected validation loss against the measured one, beside a fit on
the same pilots that does not use OT, and the spread of the measurement itself (repeats at 4×N1).
Stage by stage (`--stages`, the default): the held-out mixtures are also measured at N0 and N1, so
the error splits into Stage 1 (each size's fit against measured pilots at mixtures it never saw)
and Stage 2 (the log-N line through those measured pilots, no fit involved, against 4×N1).
`--reuse RESULTS.json` takes an earlier run's measurements instead of training them again (its
pilots when N0, N1, the grid and the pilot repeats agree; its held-out measurements, at 4×N1 and at
whichever pilot sizes it measured them, when N1 and the proxy recipe agree), after checking that
one of them reproduces with this code.

Two source sets: `near` (scripture, kernel, fortunes: one source is the target's domain, as in
Projektor's own experiments, where every source relates to the target) and `far` (kernel, man
pages, fortunes: none is, so more data from a source can make the target's loss worse). No source
document shares text with the validation or CoLoR target sets (see source_rows).

    .venv/bin/python -m bench.projection_accuracy [--sources near|far] [--n0 50] [--n1 200] [--tokens 6000000 | --epochs 2]
        [--grid 0.1667] [--pilot-repeats 1] [--no-stages] [--reuse bench/results/projection_accuracy_near.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import ray

from bench.common import debian_corpus, print_table, run_job, service, upload_file, write_json

SOURCE_SETS = {"near": ["scripture", "kernel", "fortunes"], "far": ["kernel", "manpages", "fortunes"]}


def paragraphs(row: str) -> set[str]:
    return {p.strip() for p in json.loads(row)["text"].split("\n\n") if p.strip()}


def held_paragraphs(data: str) -> set[str]:
    seen: set[str] = set()
    for held in ("validation.jsonl", "target.jsonl"):
        with open(os.path.join(data, held)) as f:
            seen |= {p for row in f.read().splitlines() for p in paragraphs(row)}
    return seen


def source_rows(data: str, name: str, held: set[str]) -> list[str]:
    """A source's documents, without any that shares a paragraph with the target or validation
    set. The corpus builder's scripture holds the same verses several times over (its chapter loop
    runs past a book's end), so without this filter most validation text would be in the source
    and a proxy's loss would measure how much of it was memorised, not the mixture."""
    with open(os.path.join(data, "sources", f"{name}.jsonl")) as f:
        rows = f.read().splitlines()
    return [row for row in rows if not paragraphs(row) & held]


def write_rows(path: str, rows: list[str]) -> None:
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


# What fixes the held-out proxies (the tokenizer comes from the revealed samples); the pilots depend
# on these and on N0, the grid and their own repeats too.
HELD_OUT_RECIPE = ("sources", "n1", "heldout", "revealed", "tokens", "epochs", "lr", "repeats", "layers", "width",
                   "stop_every", "patience")


def reusable(args) -> dict:
    with open(args.reuse) as f:
        saved = json.load(f)
    differ = [k for k in HELD_OUT_RECIPE if saved["args"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{args.reuse} was measured with another recipe ({', '.join(differ)} differ)")
    saved["args"].setdefault("pilot_repeats", saved["args"]["repeats"])  # runs before --pilot-repeats
    saved["pilots_reusable"] = all(saved["args"][k] == getattr(args, k) for k in ("n0", "grid", "pilot_repeats"))
    return saved


def check_reproduces(then: float, now: float, what: str) -> dict:
    """Reused measurements are trusted only if this code measures one of them again and gets the
    same value: the same seeds, data and tokenizer give the same loss."""
    diff = abs(now - then) / then
    print(f"{what}: saved {then:.6f}, measured again {now:.6f} (relative difference {diff:.2e})")
    if diff > 1e-3:
        raise SystemExit(f"the reused {what} does not reproduce with this code: rerun without --reuse")
    return {"what": what, "saved": then, "now": now, "rel_diff": diff}


def median_metric(runs: list[dict]) -> float:
    return float(np.median([r["metric"] for r in runs]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", choices=sorted(SOURCE_SETS), default="near")
    ap.add_argument("--n0", type=int, default=50)
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--heldout", type=int, default=6)
    ap.add_argument("--grid", type=float, default=1 / 6, help="simplex grid spacing of the pilots (1/6: 28 mixtures)")
    ap.add_argument("--revealed", type=int, default=1200, help="documents revealed per source")
    ap.add_argument("--tokens", type=int, default=6_000_000,
                    help="training budget of every proxy (a maximum with early stopping: it should never bind)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="instead of --tokens: passes over each proxy's own documents (the job's default recipe)")
    ap.add_argument("--lr", type=float, default=3e-3, help="the proxies' peak learning rate")
    ap.add_argument("--repeats", type=int, default=2, help="proxies per held-out mixture (median)")
    ap.add_argument("--pilot-repeats", type=int, default=1,
                    help="proxies per pilot mixture (median). The fit has 13 coefficients for 3 sources: 28 "
                         "mixtures once each beat 15 mixtures twice, for the same number of trainings")
    ap.add_argument("--layers", type=int, default=2, help="the proxies' transformer blocks")
    ap.add_argument("--width", type=int, default=128, help="the proxies' embedding width")
    ap.add_argument("--stop-every", type=int, default=100_000,
                    help="early stopping: evaluate every so many tokens (0: train the whole budget)")
    ap.add_argument("--patience", type=int, default=2, help="early stopping: evaluations without improvement")
    ap.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the held-out mixtures at N0 and N1, to split the error between "
                         "Stage 1 (the fit at a pilot size) and Stage 2 (the line in log N)")
    ap.add_argument("--reuse", metavar="JSON",
                    help="an earlier run's results: take its held-out measurements (same N1 and proxy recipe) "
                         "and, when N0, the grid and the pilot repeats match too, submit its pilots as measured "
                         "pilots; train only what it lacks (e.g. pilots on another grid or at another N0)")
    args = ap.parse_args()
    saved = reusable(args) if args.reuse else None
    names = SOURCE_SETS[args.sources]
    data = debian_corpus()
    work = tempfile.mkdtemp(prefix="thresher-proj-")
    available = []
    held = held_paragraphs(data)
    for name in names:  # the revealed sample and the whole source
        rows = source_rows(data, name, held)
        available.append(len(rows))
        write_rows(os.path.join(work, f"{name}.jsonl"), rows[:args.revealed])
        write_rows(os.path.join(work, f"{name}-all.jsonl"), rows)
    budget = {"epochs": args.epochs} if args.epochs else {"tokens": args.tokens}
    proxy = {"preset": "tiny", "vocab_size": 1024, "batch_size": 16, "seq_len": 64, "lr": args.lr,
             "architecture": {"n_layer": args.layers, "n_embd": args.width, "n_head": 2, "context": 64}}
    auto = {"grid_step": args.grid, **budget, "validation_docs": 300, "proxy": proxy, "repeats": args.pilot_repeats}
    if args.stop_every:
        auto["early_stopping"] = {"every_tokens": args.stop_every, "patience": args.patience}
    big = 4 * args.n1
    rng = np.random.default_rng(0)
    heldout = [list(p) for p in rng.dirichlet(np.ones(3), size=args.heldout)]
    with service(os.path.join(work, "home")) as c:
        ids = [upload_file(c, os.path.join(work, f"{n}.jsonl"), n)["id"] for n in names]
        whole = [upload_file(c, os.path.join(work, f"{n}-all.jsonl"), f"{n}-all")["id"] for n in names]
        val = upload_file(c, os.path.join(data, "validation.jsonl"), "validation")["id"]
        reuse_pilots = saved is not None and saved["pilots_reusable"]
        pilots = [{"size": p["size"], "mixture": p["mixture"], "metric": p["metric"]} for p in saved["pilots"]] \
            if reuse_pilots else "auto"
        spec = {"sources": [{"corpus": i, "price_per_doc": 1.0, "available_docs": a} for i, a in zip(ids, available)],
                "validation": val, "pilot_sizes": [args.n0, args.n1], "target_sizes": [big],
                "pilots": pilots, "metric": "loss", "auto": auto}
        job = run_job(c, "projection", spec)
        summary = job["result"]["summary"]
        sizes = [args.n0, args.n1, big]
        pred = c.post(f"/v1/projections/{job['id']}/predict", json={"mixtures": heldout, "sizes": sizes}).json()
        by_size = {n: [p["predicted"] for p in pred["predictions"] if p["size"] == n] for n in sizes}
        predicted = by_size[big]

        # Measure the held-out mixtures at 4×N1 with the same proxy recipe, and refit without OT.
        from workers.jobs.projection import fit_per_size, pilot_task, proxy_report as job_report, shared_tokenizer_task
        svc = c.app.state.svc
        home = ("jobs", job["id"])
        tok = (*home, "tokenizer.json")
        def shards(corpus):
            return [("corpora", corpus, n) for n in svc.store.list("corpora", corpus, suffix=".parquet")]
        whole_parts, revealed, val_parts = [shards(i) for i in whole], [shards(i) for i in ids], shards(val)
        pilots = json.loads(svc.store.read_bytes(*home, "pilots.json"))  # with their OT values
        saved_at = {int(n): v for n, v in ((saved or {}).get("stages") or {}).get("measured_at_pilot_sizes", {}).items()}

        def heldout_refs(n, k, r, parts):  # held-out mixture k at size n, repeat r (fixed seeds)
            seed = (1000 if n == big else 2000) + 10 * k + r
            return pilot_task.remote(svc.store.root, parts, val_parts, tok, n, heldout[k], auto,
                                     (*home, "heldout", f"h{k}-{r}-{n}.json"), seed)
        reproduced = None
        if reuse_pilots:
            # The job made no tokenizer (its pilots were given): train the one it would have made, and
            # check it, and the code, reproduce a reused pilot (the job's first: seed 0).
            ray.get(shared_tokenizer_task.remote(svc.store.root, revealed, tok, proxy["vocab_size"], 0))
            first = saved["pilots"][0]
            again = ray.get(pilot_task.remote(svc.store.root, revealed, val_parts, tok, first["size"], first["mixture"],
                                              auto, (*home, "reproduce.json"), 0))["metric"]
            reproduced = check_reproduces(first["repeats"][0], again, "first pilot")
        elif saved is not None:
            # New pilots (another N0, grid or repeats draw other seeds): measure the first held-out
            # mixture again at the smallest size the saved run has it, and compare.
            n = min(saved_at, default=big)
            parts = whole_parts if n == big else revealed
            again = median_metric(ray.get([heldout_refs(n, 0, r, parts) for r in range(args.repeats)]))
            reproduced = check_reproduces(saved_at[n][0] if n in saved_at else saved["measured"][0], again,
                                          f"first held-out mixture at N = {n}")
        refs = [] if saved is not None else \
            [[heldout_refs(big, k, r, whole_parts) for r in range(args.repeats)] for k in range(len(heldout))]
        # Stage by stage: the held-out mixtures measured as pilots too (revealed samples, nested draws).
        stage_refs = {n: [[heldout_refs(n, k, r, revealed) for r in range(args.repeats)] for k in range(len(heldout))]
                      for n in ((args.n0, args.n1) if args.stages else ()) if n not in saved_at}
        heldout_runs = [ray.get(group) for group in refs]
        stage_runs = {n: [ray.get(group) for group in groups] for n, groups in stage_refs.items()}
        repeats = saved["repeats"] if saved is not None else [[x["metric"] for x in group] for group in heldout_runs]
        measured = [float(np.median(r)) for r in repeats]
    # Proxies still improving when the budget ran out measure the budget, not their data.
    everything = [r for group in heldout_runs for r in group] + \
        [r for groups in stage_runs.values() for group in groups for r in group]
    pilot_report = summary.get("proxies", {}) if not reuse_pilots else (saved.get("proxies") or {}).get("pilots", {})
    proxies = {"pilots": pilot_report, "held-out": job_report(everything)} if args.stop_every else None
    from scoring.projektor import SizeProjection
    _, plain = fit_per_size(pilots, [p["ot"] for p in pilots], [args.n0, args.n1])
    no_ot = SizeProjection(args.n0, plain[args.n0], args.n1, plain[args.n1])
    predicted_no_ot = [no_ot.predict(big, np.asarray(m)) for m in heldout]

    def rel(pred, meas):
        return float(np.mean(np.abs(np.array(pred) - np.array(meas)) / np.array(meas)))
    # How far one repeat lies from the median of the others: the noise floor of a measured value.
    spread = float(np.mean([abs(r[i] - np.median(np.delete(r, i))) / np.median(np.delete(r, i))
                            for r in map(np.asarray, repeats) for i in range(len(r))])) if args.repeats > 1 else None
    rows = [[", ".join(f"{x:.2f}" for x in mix), m, " ".join(f"{x:.3f}" for x in r), p, q]
            for mix, m, r, p, q in zip(heldout, measured, repeats, predicted, predicted_no_ot)]
    print_table(f"Held-out mixtures of {names} at N = {big} (pilots at {args.n0}, {args.n1}; target: scripture)",
                ["mixture", "measured (median)", "repeats", "projected (OT)", "projected (no OT)"], rows)
    err_ot, err_plain = rel(predicted, measured), rel(predicted_no_ot, measured)
    print_table("Mean relative error", ["fit", "error"],
                [["pseudo-quadratic OT", err_ot], ["no OT", err_plain], ["one repeat vs the others (noise)", spread]])
    stages = None
    if args.stages:
        from scoring.projektor import project_log_n
        at = {n: [median_metric(group) for group in stage_runs[n]] if n in stage_runs else saved_at[n]
              for n in (args.n0, args.n1)}
        line = [float(project_log_n(big, args.n0, args.n1, a, b)) for a, b in zip(at[args.n0], at[args.n1])]
        stages = {"measured_at_pilot_sizes": {str(n): v for n, v in at.items()}, "line_through_measured": line,
                  "stage1_error": {str(n): rel(by_size[n], at[n]) for n in at},
                  "stage1_error_no_ot": {str(n): rel([plain[n].predict(np.asarray(m)) for m in heldout], at[n]) for n in at},
                  "stage2_error": rel(line, measured)}
        print_table("Stage by stage (held-out mixtures measured at the pilot sizes too)", ["mixture"] +
                    [f"{h} {n}" for n in at for h in ("measured", "fit")] + [f"line to {big}", f"measured {big}"],
                    [[", ".join(f"{x:.2f}" for x in mix)] + [v for n in at for v in (at[n][k], by_size[n][k])] +
                     [line[k], measured[k]] for k, mix in enumerate(heldout)])
        print_table("Where the error comes from", ["stage", "mean relative error"],
                    [[f"Stage 1: OT fit at N = {n}", stages["stage1_error"][str(n)]] for n in at] +
                    [[f"Stage 1: no-OT fit at N = {n}", stages["stage1_error_no_ot"][str(n)]] for n in at] +
                    [["Stage 2: log-N line through the measured pilots", stages["stage2_error"]]])
    print(f"fit quality: {json.dumps(summary['fit'])}")
    print(f"optimum: {summary['optimum']}")
    if proxies is not None:
        print_table("Proxies per size (early stopping)", ["proxies of", "N", "proxies", "best at (median tokens)", "best at (max)", "still improving at the budget"],
                    [[kind, n, r["proxies"], r["best_tokens_median"], r["best_tokens_max"], r["still_improving"]]
                     for kind, report in proxies.items() for n, r in report.items()])
    write_json(f"projection_accuracy_{args.sources}", {
        "args": vars(args), "sources": names, "heldout": heldout, "measured": measured, "repeats": repeats,
        "projected_ot": predicted, "projected_no_ot": predicted_no_ot, "mean_rel_error_ot": err_ot,
        "mean_rel_error_no_ot": err_plain, "measurement_spread": spread, "fit": summary["fit"],
        "optimum": summary["optimum"], "proxies": proxies, "stages": stages, "pilots": saved["pilots"] if reuse_pilots else pilots,
        "reused": args.reuse, "reproduced": reproduced, "job_wall_s": saved["job_wall_s"] if reuse_pilots else job["wall_s"]})


if __name__ == "__main__":
    main()
