"""Benchmark of the per-document loss engine (the CoLoR-Filter scoring hot path).

Measures in one run: the machine's large-matmul peak (float32 and bf16), the engine's tokens/s and
achieved FLOP/s per model preset with its ratio to those peaks, and a naive per-document loop
(batch 1, float32, no packing, full logits) over the same documents as a baseline. Prints a table
and writes bench/results/scoring.json. Not run in CI.

    python -m bench.scoring                                   # CPU, presets small and base
    python -m bench.scoring --threads 1 --doc-lengths short     # where length-sorted packing pays most
    python -m bench.scoring --device cuda --preset 150m --vocab 50257

Synthetic documents (random ids; lengths C4-like, lognormal with median ~245 tokens, or short,
5–40 tokens) stand in for text: the cost of a forward does not depend on which ids it sees. Further sections (e.g. scoring
through Ray and storage) add one function each and one key in `results`, see `main`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path and shadow the `scoring` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.nn.functional as F

from scoring.device import cpu_has_native_bf16, pick_device
from scoring.gpt import GPT, config_from_preset
from scoring.lm_loss import DocumentLossEngine, window_layout

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.5) -> dict:
    """FLOP/s of repeated large square matmuls. The size grows from 256 until one product takes a
    noticeable time, so an emulated dtype (bf16 on an AVX2 CPU) is measured quickly on a smaller n."""
    n_max = 8192 if device.type == "cuda" else 2048
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        one = time.perf_counter() - start
        if n >= n_max or one > seconds / 8:
            break
        n *= 2
    reps = max(1, int(seconds / max(one, 1e-6)))
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    elapsed = time.perf_counter() - start
    return {"n": n, "flops": 2 * n**3 * reps / elapsed}


DOC_LENGTHS = {  # name -> draw of one document length
    "c4": lambda rng: int(np.clip(rng.lognormal(5.5, 0.8), 8, 4096)),  # median ~245 tokens
    "short": lambda rng: int(rng.integers(5, 40)),  # titles, tweets, QA pairs: where packing pays most
}


def synthetic_documents(n_tokens: int, vocab: int, lengths: str = "c4", seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = DOC_LENGTHS[lengths](rng)
        docs.append(rng.integers(2, vocab, n).tolist())
        total += n
    return docs


def forward_flops(model: GPT, docs: list[list[int]], context: int) -> tuple[float, float]:
    """(all matmul FLOPs, FLOPs without the output head) of scoring `docs`: per window of t
    targets, t·(2N + 4·L·d·t) PaLM-style; the second drops the d·V head from N."""
    _, _, t = window_layout(np.array([len(d) for d in docs]), context)
    t = t.astype(np.float64)
    cfg = model.config
    attention = (4 * cfg.n_layer * cfg.n_embd * t * t).sum()
    blocks = 2 * 12 * cfg.n_layer * cfg.n_embd**2 * t.sum()
    head = 2 * cfg.vocab_size * cfg.n_embd * t.sum()
    return float(blocks + head + attention), float(blocks + attention)


def measure_engine(
    model: GPT, device: torch.device, batch_tokens: int | None, seconds: float, vocab: int, lengths: str
) -> dict:
    engine = DocumentLossEngine(model, batch_tokens=batch_tokens, device=device)
    calibration = max(engine.batch_tokens, 4 * model.context)
    engine.score(synthetic_documents(calibration, vocab, lengths, seed=1))  # warm-up
    sync(device)
    start = time.perf_counter()
    engine.score(synthetic_documents(calibration, vocab, lengths, seed=2))
    sync(device)
    rate = calibration / (time.perf_counter() - start)
    docs = synthetic_documents(int(rate * seconds), vocab, lengths)
    sync(device)
    start = time.perf_counter()
    loss, n_tokens = engine.score(docs)
    sync(device)
    elapsed = time.perf_counter() - start
    flops, flops_no_head = forward_flops(model, docs, engine.context)
    return {
        "docs": docs,
        "loss": loss,
        "dtype": str(engine.dtype or torch.float32).replace("torch.", ""),
        "batch_tokens": engine.batch_tokens,
        "documents": len(docs),
        "tokens": int(n_tokens.sum()),
        "seconds": elapsed,
        "tokens_per_s": n_tokens.sum() / elapsed,
        "flops_per_s": flops / elapsed,
        "flops_per_s_without_head": flops_no_head / elapsed,
    }


def measure_naive(model: GPT, device: torch.device, docs: list[list[int]], seconds: float) -> dict:
    """One window at a time, float32, full logits: the loop one writes first."""
    context, tokens, losses = model.context, 0, []
    start = time.perf_counter()
    with torch.inference_mode():
        for doc in docs:
            total = 0.0
            for s in range(0, len(doc) - 1, context):
                piece = torch.tensor(doc[s : s + context + 1], device=device)
                total += F.cross_entropy(model(piece[None, :-1])[0].float(), piece[1:], reduction="sum").item()
            losses.append(total / (len(doc) - 1))
            tokens += len(doc) - 1
            if time.perf_counter() - start > seconds:
                break
    elapsed = time.perf_counter() - start
    return {"documents": len(losses), "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "loss": losses}


def measure_pipeline(preset: str, vocab: int, docs: int, threads: int) -> dict:
    """The scoring stage of a color_filter job (Parquet shards → LossScorer actor on Ray → score
    parts in storage) against the engine alone (tokenize + score in this process) on the same
    documents, at 1× and 4× corpus size, with the actor's peak RSS at each size."""
    import random
    import resource
    import tempfile

    import pyarrow as pa
    import ray

    from scoring.tokenizer import eos_id, train_tokenizer
    from storage.fs import Store
    from workers.models import LossScorer, save_trained
    from scoring.lm_loss import tokenize_documents

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    tokenizer = train_tokenizer((" ".join(rng.choices(words, k=200)) for _ in range(2000)), vocab_size=vocab)
    torch.manual_seed(0)
    model = GPT(config_from_preset(preset, tokenizer.get_vocab_size())).eval()
    store = Store(tempfile.mkdtemp(prefix="thresher-bench-"))
    save_trained(store, "mdl_bench", model, tokenizer, {})
    record = {"id": "mdl_bench", "source": "trained", "meta": {}}
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    out = {}
    for scale in (1, 4):
        n, shard = docs * scale, 500
        texts = [" ".join(rng.choices(words, k=int(rng.lognormvariate(5.0, 0.6)))) for _ in range(n)]
        for s in range(0, n, shard):
            store.write_parquet(pa.table({"id": [f"d{i}" for i in range(s, min(n, s + shard))], "text": texts[s:s + shard],
                                          "source": [None] * len(texts[s:s + shard])}), "corpora", f"c{scale}", f"shard-{s // shard:05d}.parquet")
        # Engine alone: tokenize and score in this process, no storage, no Ray.
        torch.set_num_threads(threads)
        engine = DocumentLossEngine([model, model])
        start = time.perf_counter()
        for s in range(0, n, shard):
            engine.score(tokenize_documents(tokenizer, texts[s:s + shard], prepend_id=eos_id(tokenizer)))
        engine_s = time.perf_counter() - start
        # Through Ray and storage: the job's own actor, shard by shard.
        start = time.perf_counter()
        actor = LossScorer.options(num_cpus=threads).remote(store.root, [record, record], threads, {})
        refs = [actor.score_shard.remote(i, ("corpora", f"c{scale}", f"shard-{i:05d}.parquet"),
                                         ("scores", f"c{scale}", f"part-{i:05d}.parquet")) for i in range(-(-n // shard))]
        ray.get(refs)
        ray_s = time.perf_counter() - start
        rss = ray.get(actor.__ray_call__.remote(lambda self: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)) / 1024
        ray.kill(actor)
        tokens = sum(len(t) for t in tokenize_documents(tokenizer, texts, prepend_id=eos_id(tokenizer)))
        out[f"{scale}x"] = {"documents": n, "tokens": tokens, "engine_s": engine_s, "ray_and_storage_s": ray_s,
                            "overhead": ray_s / engine_s - 1, "actor_peak_rss_mb": rss}
    ray.shutdown()
    return {"preset": preset, "threads": threads, "models": 2, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--preset", action="append", help="repeatable; default small and base")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the engine's, per device")
    parser.add_argument("--seconds", type=float, default=20.0, help="engine time per preset")
    parser.add_argument("--naive-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--doc-lengths", choices=sorted(DOC_LENGTHS), default="c4")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--pipeline-docs", type=int, default=2000, help="0 skips the Ray + storage section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    presets = args.preset or ["small", "base"]

    results: dict = {
        "machine": {
            "device": str(device),
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16_cpu": cpu_has_native_bf16(),
            "threads": torch.get_num_threads(),
            "doc_lengths": args.doc_lengths,
            "load_average_at_start": os.getloadavg(),
            "torch": torch.__version__,
        },
        "matmul_peak_flops": {
            "float32": matmul_peak(device, torch.float32),
            "bfloat16": matmul_peak(device, torch.bfloat16),
        },
        "engine": {},
    }
    peak_bf16 = results["matmul_peak_flops"]["bfloat16"]["flops"]
    for preset in presets:
        torch.manual_seed(0)
        model = GPT(config_from_preset(preset, args.vocab)).to(device).eval()
        # On a shared machine the attainable FLOP/s drifts: bracket each run with float32 peaks.
        fp32_before = matmul_peak(device, torch.float32)["flops"]
        engine = measure_engine(model, device, args.batch_tokens, args.seconds, args.vocab, args.doc_lengths)
        fp32_after = matmul_peak(device, torch.float32)["flops"]
        peak_fp32 = (fp32_before + fp32_after) / 2
        docs, engine_loss = engine.pop("docs"), engine.pop("loss")
        naive = measure_naive(model, device, docs, args.naive_seconds)
        naive_loss = np.array(naive.pop("loss"))
        peak_used = peak_bf16 if engine["dtype"] == "bfloat16" else peak_fp32
        results["engine"][preset] = {
            "params": model.num_params(non_embedding=False),
            "params_non_embedding": model.num_params(),
            "context": model.context,
            **engine,
            "fp32_peak_flops_around_run": [fp32_before, fp32_after],
            "ratio_to_bf16_peak": engine["flops_per_s"] / peak_bf16,
            "ratio_to_fp32_peak": engine["flops_per_s"] / peak_fp32,
            "ratio_to_peak_of_dtype_used": engine["flops_per_s"] / peak_used,
            "naive": naive,
            "speedup_over_naive": engine["tokens_per_s"] / naive["tokens_per_s"],
            # Same documents, two code paths: the engine must agree with the naive loop.
            "max_abs_loss_difference_vs_naive": float(np.abs(engine_loss[: len(naive_loss)] - naive_loss).max()),
        }
    if args.pipeline_docs:
        results["pipeline"] = measure_pipeline("small", args.vocab, args.pipeline_docs, torch.get_num_threads())
    results["machine"]["load_average_at_end"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print_table(results)
    print(f"\nwrote {args.out}")


def print_table(results: dict) -> None:
    m, peaks = results["machine"], results["matmul_peak_flops"]
    print(f"device {m['device']} ({m['name']}, {m['cpu_capability']}, {m['threads']} threads, "
          f"load {m['load_average_at_start'][0]:.1f} → {m['load_average_at_end'][0]:.1f})")
    print(f"matmul peak at start: float32 {peaks['float32']['flops'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bfloat16']['flops'] / 1e9:.2f} GFLOP/s (/fp32pk uses peaks measured around each run)")
    header = f"{'preset':<7} {'dtype':<9} {'tokens/s':>10} {'GFLOP/s':>8} {'/bf16pk':>8} {'/fp32pk':>8} {'naive tok/s':>11} {'speedup':>8} {'|Δloss|':>8}"
    print(header)
    print("-" * len(header))
    for preset, r in results["engine"].items():
        print(f"{preset:<7} {r['dtype']:<9} {r['tokens_per_s']:>10.0f} {r['flops_per_s'] / 1e9:>8.1f} "
              f"{r['ratio_to_bf16_peak']:>8.2f} {r['ratio_to_fp32_peak']:>8.2f} {r['naive']['tokens_per_s']:>11.0f} "
              f"{r['speedup_over_naive']:>8.1f} {r['max_abs_loss_difference_vs_naive']:>8.1e}")
    if "pipeline" in results:
        p = results["pipeline"]
        print(f"\nscoring stage through Ray + storage vs the engine alone ({p['preset']}, prior + conditional, "
              f"{p['threads']} threads)")
        print(f"{'corpus':<7} {'docs':>6} {'tokens':>9} {'engine s':>9} {'ray+io s':>9} {'overhead':>9} {'actor RSS MB':>13}")
        for scale in ("1x", "4x"):
            r = p[scale]
            print(f"{scale:<7} {r['documents']:>6} {r['tokens']:>9} {r['engine_s']:>9.1f} {r['ray_and_storage_s']:>9.1f} "
                  f"{r['overhead']:>9.1%} {r['actor_peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
