"""A training loop driven by a Thresher curriculum run over HTTP (SeTa here; InfoBatch alike).

Each epoch the loop fetches its sample list, trains on those documents, and posts the per-sample
losses it saw; the service plans the next epoch from them. The model is a bag-of-words classifier
of each document's source, small enough to run in seconds on a laptop.

From the checkout's root, after `make install`:

    .venv/bin/thresher serve &                        # or any running service
    .venv/bin/python examples/curriculum_over_http.py [--url http://127.0.0.1:8321] [--key KEY]
"""
from __future__ import annotations

import argparse
import json
import random
import time
import zlib

import httpx
import torch
import torch.nn.functional as F

WORDS = {"cooking": "flour butter oven bake simmer garlic recipe dough roast broth".split(),
         "finance": "market stock bond yield equity dividend credit loan capital bank".split(),
         "astronomy": "star galaxy planet orbit telescope comet eclipse quasar moon photon".split()}
COMMON = "the of and a to in is was that for it with as on be at by this".split()
BUCKETS, EPOCHS, BATCH = 512, 6, 32


def make_corpus(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        source = rng.choice(list(WORDS))
        noise = rng.random() < 0.1  # some documents are hard: mostly common words
        words = [rng.choice(COMMON if noise or rng.random() < 0.6 else WORDS[source]) for _ in range(30)]
        docs.append({"id": f"doc{i}", "text": " ".join(words), "source": source})
    return docs


def featurise(text: str) -> torch.Tensor:
    x = torch.zeros(BUCKETS)
    for w in text.split():
        x[zlib.crc32(w.encode()) % BUCKETS] += 1.0
    return x / max(1.0, x.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8321")
    ap.add_argument("--key", default=None)
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    api = httpx.Client(base_url=args.url, headers=headers, timeout=60)

    docs = make_corpus(2000)
    body = "".join(json.dumps(d) + "\n" for d in docs).encode()
    corpus = api.post("/v1/corpora", params={"name": "example-train", "format": "jsonl"}, content=body).json()
    job = api.post("/v1/jobs", json={"kind": "curriculum", "spec": {
        "corpus": corpus["id"], "method": "seta", "epochs": EPOCHS, "prune_ratio": 0.2,
        "num_groups": 5, "window_scale": 0.6, "seed": 0}}).json()
    while (job := api.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
        time.sleep(0.2)
    run = job["result"]["curriculum_id"]

    by_id = {d["id"]: d for d in docs}
    labels = {s: i for i, s in enumerate(WORDS)}
    model = torch.nn.Linear(BUCKETS, len(WORDS))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for epoch in range(EPOCHS):
        plan = api.get(f"/v1/curricula/{run}/epochs/{epoch}").json()
        ids, seen = plan["doc_ids"], []
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            x = torch.stack([featurise(by_id[i]["text"]) for i in batch])
            y = torch.tensor([labels[by_id[i]["source"]] for i in batch])
            losses = F.cross_entropy(model(x), y, reduction="none")  # per-sample losses
            weights = torch.tensor(plan["weights"][start:start + BATCH]) if plan["weights"] else 1.0
            opt.zero_grad()
            (losses * weights).mean().backward()
            opt.step()
            seen += [{"doc_id": i, "loss": float(v)} for i, v in zip(batch, losses.detach())]
        r = api.post(f"/v1/curricula/{run}/losses", json={"epoch": epoch, "losses": seen})
        r.raise_for_status()
        mean = sum(x["loss"] for x in seen) / len(seen)
        print(f"epoch {epoch}: {len(ids):5d} samples, mean loss {mean:.3f}, "
              f"saved so far {r.json()['saved_fraction']:.1%}")


if __name__ == "__main__":
    main()
