"""Cost of the `classifier` and `embedding` selectors' compute on this machine, and the embedding
selector's two similarities on a generated within-domain task (not in CI).

- fastText: a classifier trained as the `classifier` kind trains it (the held-out grid, then the
  final fit; target and negatives of `--docs` documents each), its model file's size and load time,
  and scoring (P(target)) in documents per second on one core;
- all-MiniLM-L6-v2: loading, and embedding short (~40 words) and long (~400 words: truncated to
  256 tokens) documents in documents per second, with 1 and 2 torch threads;
- centroid against knn (k = 1, 5, 10, 25): the precision of the top documents on a generated pool
  where the target is one *part* of a domain (planetary astronomy among deep-sky astronomy, cooking
  and finance): the domain's vocabulary does not separate it, the part's does.

    .venv/bin/python -m bench.selectors [--docs 1000] [--seeds 0,1,2] [--encode-docs 128] [--pool-docs 1000]
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import numpy as np
import torch

from bench.common import print_table, write_json
from scoring import fasttext_classifier as ftc
from scoring.encoder import Encoder, centroid_similarity, knn_similarity

COMMON = ("the of and a to in is was that for it with as on be at by this had not are but from or have an "
          "they which one you were all we her she there would their will when who him been has more").split()
# One domain in two parts with their own words, and words the whole domain shares.
ASTRONOMY = "star telescope light sky observe astronomer cosmic gravity space observatory".split()
PARTS = {"planetary": "planet orbit moon crater lunar solar eclipse asteroid comet meteor mars jupiter".split(),
         "deep-sky": "galaxy nebula quasar pulsar supernova redshift cluster dwarf neutron spectrum".split()}
OTHER = {"cooking": "flour butter sugar oven bake whisk simmer onion garlic pepper salt recipe dough".split(),
         "finance": "market stock bond yield equity dividend portfolio interest inflation credit debt".split()}


def document(rng: random.Random, source: str, words: int) -> str:
    if source in PARTS:  # a domain's part: its own words are the rarer signal
        pick = lambda: rng.choice(PARTS[source]) if rng.random() < 0.15 else rng.choice(ASTRONOMY)  # noqa: E731
    else:
        pick = lambda: rng.choice(OTHER[source])  # noqa: E731
    return " ".join(pick() if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(words)) + "."


def docs(n: int, seed: int, sources: list[str], words=(20, 60)) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": document(rng, s, rng.randint(*words)), "source": s}
            for s in (rng.choice(sources) for _ in range(n))]


def fasttext_cost(n: int) -> dict:
    pos = [d["text"] for d in docs(n, 1, ["planetary"], (80, 120))]
    neg = [d["text"] for d in docs(n, 2, ["deep-sky", "cooking", "finance"], (80, 120))]
    params = ftc.FastTextParams(workers=os.cpu_count() or 1)
    t0 = time.monotonic()
    data, report = ftc.fit_with_holdout(pos + neg, np.r_[np.ones(n, bool), np.zeros(n, bool)], params)
    train_s = time.monotonic() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.bin")
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        model = ftc.load(path)
        load_s = time.monotonic() - t0
    pool = [d["text"] for d in docs(10 * n, 3, ["planetary", "deep-sky", "cooking", "finance"], (80, 120))]
    t0 = time.monotonic()
    ftc.p_target(model, pool)
    score_s = time.monotonic() - t0
    return {"train_docs": 2 * n, "grid_fits": len(report["holdout"]["grid"]), "train_s": round(train_s, 2),
            "train_docs_per_s": round(2 * n / train_s, 1), "chosen": (report["epochs"], report["lr"]),
            "holdout_auc": report["holdout"]["auc"], "model_mb": round(len(data) / 2**20, 1),
            "load_s": round(load_s, 3), "score_docs": len(pool), "score_docs_per_s": round(len(pool) / score_s, 1)}


def encoder_cost(encoder: Encoder, n: int) -> dict:
    out = {}
    for label, words in (("short", (30, 50)), ("long", (350, 450))):
        texts = [d["text"] for d in docs(n, 4, ["planetary", "cooking"], words)]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = time.monotonic()
            encoder.encode(texts)
            out[f"{label}_docs_per_s_{threads}_threads"] = round(n / (time.monotonic() - t0), 1)
    return out


def similarity_choice(encoder: Encoder, seeds: list[int], pool_docs: int = 1000, target_docs: int = 100) -> dict:
    """Precision of the top (half the pool's target-part documents) by each similarity."""
    results = {}
    for seed in seeds:
        target = encoder.encode([d["text"] for d in docs(target_docs, 100 + seed, ["planetary"])])
        pool = docs(pool_docs, 200 + seed, ["planetary", "deep-sky", "deep-sky", "cooking", "finance"])
        emb = encoder.encode([d["text"] for d in pool])
        is_part = np.array([d["source"] == "planetary" for d in pool])
        n = int(is_part.sum()) // 2
        scores = {"centroid": centroid_similarity(emb, target),
                  **{f"knn k={k}": knn_similarity(emb, target, k) for k in (1, 5, 10, 25)}}
        for name, s in scores.items():
            results.setdefault(name, []).append(float(is_part[np.argsort(-s)[:n]].mean()))
    return {name: {"precision_mean": round(float(np.mean(v)), 4), "per_seed": v} for name, v in results.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--encode-docs", type=int, default=128, help="documents per encoder timing")
    ap.add_argument("--pool-docs", type=int, default=1000, help="the generated task's pool")
    args = ap.parse_args()
    info = {"cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    out = {"fasttext": fasttext_cost(args.docs)}
    print_table("fastText classifier", list(out["fasttext"]), [list(out["fasttext"].values())])
    t0 = time.monotonic()
    encoder = Encoder()
    out["encoder"] = {"load_s": round(time.monotonic() - t0, 2), **encoder_cost(encoder, args.encode_docs)}
    print_table("all-MiniLM-L6-v2", list(out["encoder"]), [list(out["encoder"].values())])
    out["similarity"] = similarity_choice(encoder, [int(s) for s in args.seeds.split(",")], args.pool_docs)
    print_table("similarity on the generated within-domain task (precision of the top)", ["similarity", "mean", "per seed"],
                [[k, v["precision_mean"], v["per_seed"]] for k, v in out["similarity"].items()])
    info["load_avg_at_end"] = os.getloadavg()
    print(f"\nmachine: {info}")
    write_json("selectors", {"args": vars(args), "machine": info, "results": out})


if __name__ == "__main__":
    main()
