"""A DCLM-style fastText classifier (word bigrams) that tells target-like documents from others.

DCLM's quality filter is a fastText classifier over word unigrams and bigrams (`wordNgrams=2`),
trained on positives (the data one wants more of) against negatives (a sample of the pool), whose
P(positive) ranks the pool. Text is normalised as DCLM does before fastText sees it: lowercase,
whitespace (newlines included: fastText reads one example per line) collapsed to single spaces.

A target of a few hundred documents overfits or underfits at fastText's defaults (lr 0.1, 5
epochs), so `fit_with_holdout` first holds out a stratified slice of both classes, trains every
(epochs, lr) of a small grid on the rest, keeps the setting with the best held-out AUC (then the
lowest held-out log loss: AUCs within 0.01 count as tied, since a few dozen held-out documents
cannot tell them apart), and trains once more on everything with it. Its report holds the check.

Every fit runs in a fresh child process, one thread. fastText initialises only `thread` tenths of
its input matrix (DenseMatrix::uniformThread) and leaves the rest as allocated; in a process that
has trained and freed a model before, that memory holds the old weights, so a second fit in the
same process starts from them: its results drift and high learning rates diverge ("Encountered
NaN"). A fresh process gets fresh, zeroed pages (the matrix is at least 512 KiB, above glibc's
mmap threshold), and one thread makes the fit reproducible (several threads train Hogwild-style,
in no fixed order). The grid's fits run side by side, `workers` at a time.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import fasttext
import numpy as np

POSITIVE, NEGATIVE = "__label__target", "__label__other"
EPOCHS_GRID = (5, 20, 50)
LR_GRID = (0.1, 0.5, 1.0)
MIN_DIM, MIN_BUCKETS = 8, 2**14  # the input matrix is then at least 512 KiB (see above)
# fastText adds 1e-5 to each probability before its log; its outputs can pass 1 by that much.
_PROB_FLOOR = 1e-5
_CHILD = "from scoring.fasttext_classifier import fit_in_child; fit_in_child()"


@dataclass(frozen=True)
class FastTextParams:
    """What a fit needs besides its data. `buckets` hashes the word bigrams (the model holds
    (words + buckets) × dim floats: the size of the model file). `workers`: fits run at once."""
    dim: int = 100
    buckets: int = 2**19
    min_count: int = 1
    workers: int = 1
    seed: int = 0


def normalise(text: str | None) -> str:
    """DCLM's normalisation: lowercase, whitespace collapsed, one line."""
    return " ".join((text or "").lower().split())


def write_examples(path: str, texts: list[str], labels: np.ndarray, seed: int) -> None:
    """fastText's training file: one `__label__… text` line per document, in a seeded order."""
    with open(path, "w", encoding="utf-8") as f:
        for i in np.random.default_rng(seed).permutation(len(texts)):
            f.write(f"{POSITIVE if labels[i] else NEGATIVE} {normalise(texts[i])}\n")


def fit_in_child() -> None:
    """A child process's one fit (argv[1]: JSON): it saves the model to `out`, or writes P(target)
    of each line of `predict` to `probs` (a grid's fit needs only its held-out predictions, not
    its model file: hundreds of MB at the default size)."""
    a = json.loads(sys.argv[1])
    model = fasttext.train_supervised(**a["args"])
    if a.get("out"):
        model.save_model(a["out"])
    if a.get("predict"):
        with open(a["predict"], encoding="utf-8") as f:
            np.save(a["probs"], p_target(model, f.read().split("\n")[:-1]))


def fit_files(train_path: str, settings: list[tuple[int, float]], params: FastTextParams, out_dir: str,
              predict: str | None = None) -> list:
    """Fit one model per (epochs, lr) on `train_path`, each in a child process, `params.workers` at
    a time. Per setting: the model file's path, or with `predict` (a file of normalised lines)
    their P(target); or the error (a RuntimeError) that stopped its fit."""
    if params.dim < MIN_DIM or params.buckets < MIN_BUCKETS:
        raise ValueError(f"dim must be at least {MIN_DIM} and buckets at least {MIN_BUCKETS}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results: list = [None] * len(settings)
    running: dict[int, subprocess.Popen] = {}

    def finish(i: int) -> None:
        proc = running.pop(i)
        err = proc.communicate()[1]
        if proc.returncode:
            lines = [x for x in err.decode(errors="replace").strip().splitlines() if x.strip()]
            results[i] = RuntimeError(lines[-1] if lines else f"fastText exited with {proc.returncode}")
        elif predict:
            results[i] = np.load(results[i])

    for i, (epochs, lr) in enumerate(settings):
        args = {"input": train_path, "epoch": int(epochs), "lr": float(lr), "wordNgrams": 2, "dim": params.dim,
                "bucket": params.buckets, "minCount": params.min_count, "thread": 1, "seed": params.seed,
                "loss": "softmax", "verbose": 0}
        job = ({"probs": os.path.join(out_dir, f"probs-{i}.npy"), "predict": predict} if predict
               else {"out": os.path.join(out_dir, f"model-{i}.bin")})
        while len(running) >= max(1, params.workers):
            finish(next(iter(running)))
        results[i] = job.get("probs") or job["out"]
        running[i] = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps({"args": args, **job})],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    while running:
        finish(next(iter(running)))
    return results


def fit(texts: list[str], labels, epochs: int, lr: float, params: FastTextParams):
    """One fastText model on `texts` with boolean `labels` (True: target); RuntimeError if it diverges."""
    with tempfile.TemporaryDirectory(prefix="fasttext-") as tmp:
        data = os.path.join(tmp, "train.txt")
        write_examples(data, texts, np.asarray(labels, bool), params.seed)
        (path,) = fit_files(data, [(epochs, lr)], params, tmp)
        if isinstance(path, Exception):
            raise path
        return load(path)


def p_target(model, texts: list[str]) -> np.ndarray:
    """P(target) of each text; NaN for a text with nothing but whitespace."""
    lines = [normalise(t) for t in texts]
    out = np.full(len(lines), np.nan)
    keep = [i for i, line in enumerate(lines) if line]
    if keep:
        labels, probs = model.predict([lines[i] for i in keep], k=2)
        for i, ls, ps in zip(keep, labels, probs):
            got = dict(zip(ls, ps))
            p = got.get(POSITIVE, 1.0 - got.get(NEGATIVE, 1.0))
            out[i] = min(1.0, max(0.0, float(p) - _PROB_FLOOR))
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half): the chance a random positive outranks a random
    negative. None without both classes."""
    from scipy.stats import rankdata
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified held-out mask: `fraction` of each class (at least one of each when it has two
    or more), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for cls in (True, False):
        idx = np.flatnonzero(labels == cls)
        n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) >= 2 else 0
        held[rng.choice(idx, size=n, replace=False)] = True
    return held


def evaluate(p: np.ndarray, labels: np.ndarray) -> dict:
    """Held-out AUC, accuracy (at P 0.5) and log loss of predictions `p`."""
    ok = ~np.isnan(p)
    p, y = np.clip(p[ok], 1e-6, 1 - 1e-6), labels[ok]
    return {"auc": auc(p, y), "accuracy": float(np.mean((p >= 0.5) == y)) if len(y) else None,
            "log_loss": float(-np.mean(np.where(y, np.log(p), np.log(1 - p)))) if len(y) else None}


def _preference(g: dict) -> tuple:
    return (round(g["auc"], 2) if g["auc"] is not None else -1,
            -(g["log_loss"] if g["log_loss"] is not None else math.inf))


def fit_with_holdout(texts: list[str], labels, params: FastTextParams, epochs_grid=EPOCHS_GRID,
                     lr_grid=LR_GRID, holdout_fraction: float = 0.2) -> tuple[bytes, dict]:
    """(model file bytes, report): the grid's best (epochs, lr) by held-out AUC, then held-out log
    loss, retrained on all `texts`. With holdout_fraction 0, or fewer than two documents of a class,
    nothing is held out and the grid's first setting is used (the report says so)."""
    labels = np.asarray(labels, dtype=bool)
    report = {"positives": int(labels.sum()), "negatives": int((~labels).sum()), "word_ngrams": 2,
              "dim": params.dim, "buckets": params.buckets}
    held = holdout_split(labels, holdout_fraction, params.seed) if holdout_fraction > 0 else np.zeros(len(labels), bool)
    settings = [(int(e), float(r)) for e in epochs_grid for r in lr_grid]
    with tempfile.TemporaryDirectory(prefix="fasttext-") as tmp:
        everything = os.path.join(tmp, "all.txt")
        write_examples(everything, texts, labels, params.seed)
        if not (held & labels).any() or not (held & ~labels).any():
            ranked = settings[:1]
            report.update(holdout=None, note="no held-out check: holdout_fraction is 0 or a class has fewer "
                                             "than 2 documents")
        else:
            part = os.path.join(tmp, "train.txt")
            train_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
            write_examples(part, [texts[i] for i in train_idx], labels[train_idx], params.seed)
            held_lines = os.path.join(tmp, "held.txt")
            with open(held_lines, "w", encoding="utf-8") as f:
                f.writelines(normalise(texts[i]) + "\n" for i in held_idx)
            grid = []
            for (epochs, lr), p in zip(settings, fit_files(part, settings, params, tmp, predict=held_lines)):
                if isinstance(p, Exception):  # e.g. "Encountered NaN": diverged at this learning rate
                    grid.append({"epochs": epochs, "lr": lr, "error": str(p)})
                    continue
                grid.append({"epochs": epochs, "lr": lr, **evaluate(p, labels[held_idx])})
            best = sorted((g for g in grid if "error" not in g), key=_preference, reverse=True)
            ranked = [(g["epochs"], g["lr"]) for g in best]
            report["holdout"] = {"positives": int((held & labels).sum()), "negatives": int((held & ~labels).sum()),
                                 "grid": grid}
        for epochs, lr in ranked:  # the best setting that also converges on all the data
            (path,) = fit_files(everything, [(epochs, lr)], params, tmp)
            if not isinstance(path, Exception):
                report.update(epochs=epochs, lr=lr)
                if report.get("holdout"):  # the check of the setting used (the best may have diverged here)
                    chosen = next(g for g in report["holdout"]["grid"] if (g["epochs"], g["lr"]) == (epochs, lr))
                    report["holdout"].update({k: chosen[k] for k in ("auc", "accuracy", "log_loss")})
                with open(path, "rb") as f:
                    return f.read(), report
        raise ValueError(f"fastText diverged at every setting tried: {report.get('holdout')}")


def load(path: str):
    return fasttext.load_model(path)
