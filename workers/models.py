"""Auxiliary language models on workers: where they live in storage, how a worker loads them, and
the scoring actor that keeps them in memory while shards stream through it.

A trained model is a checkpoint directory in storage (`models/<id>/`, `meta.json` written last, so
its presence means the checkpoint is complete). A registered model is a local Hugging Face
checkpoint directory that every worker can read. Workers never see the catalog: the driver hands
them the model's record.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import ray
import torch

from scoring.checkpoint import HF_FORMAT, load_hf_causal_lm, load_model, save_model
from scoring.device import pick_device
from scoring.lm_loss import DocumentLossEngine, evidence, tokenize_documents
from scoring.tokenizer import eos_id
from storage import layout
from storage.errors import DomainError
from storage.fs import Store
from storage.inputs import Access
from storage.manifests import score_part
from workers.jobs.common import empty_mask, unscored
from workers.kind import REQUEST_TASK
from workers.runtime import actor_cpu, node_id, ray_get
from workers.specs import LimitExceeded

CACHE = os.path.join(tempfile.gettempdir(), "thresher-models")


def store_checkpoint(store: Store, model_id: str, local_dir: str) -> None:
    for name in layout.MODEL_FILES:
        with open(os.path.join(local_dir, name), "rb") as f:
            store.write_bytes(f.read(), *layout.model_file(model_id, name))


def checkpoint_complete(store: Store, model_id: str) -> bool:
    return store.exists(*layout.model_meta(model_id))


def local_checkpoint(store: Store, model_id: str) -> str:
    """A local directory holding the checkpoint (the store itself when it is local)."""
    if store.local:
        return store.path(*layout.model(model_id))
    target = os.path.join(CACHE, model_id)
    if os.path.isdir(target):
        return target
    # Several scorer actors on one machine may fetch the same model at once: each downloads into a
    # private folder and renames it into place whole, so none ever reads a half-written file.
    os.makedirs(CACHE, exist_ok=True)
    private = tempfile.mkdtemp(prefix=f".{model_id}-", dir=CACHE)
    for name in layout.MODEL_FILES:
        with open(os.path.join(private, name), "wb") as f:
            f.write(store.read_bytes(*layout.model_file(model_id, name)))
    try:
        os.rename(private, target)
    except OSError:          # another actor's copy got there first: use it
        shutil.rmtree(private, ignore_errors=True)
    return target


def save_trained(store: Store, model_id: str, model, tokenizer, meta: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_model(tmp, model, tokenizer, meta)
        store_checkpoint(store, model_id, tmp)


# The longest window a registered Hugging Face model scores or fine-tunes on, however long its own
# context: the paper's windows are 512 tokens, and a fine-tune batch materialises batch × window ×
# vocabulary logits (8 × 8,192 × 49,152 floats, 13 GB, for SmolLM2 at its own context).
HF_MAX_CONTEXT = 512


def load_for_scoring(store: Store, record: dict, device=None):
    """(model, tokenizer, prepend_id) for a model record of the catalog.

    Our GPTs were trained on documents each preceded by eos, so eos is prepended when scoring and
    the first real token gets a prediction too; a Hugging Face model (registered, or a fine-tune of
    one) keeps its own special tokens.
    """
    device = device or pick_device()
    if record["source"] == "huggingface":
        with checked_checkpoint(record["meta"]["path"], record["access"]) as folder:
            # No larger than it was when registered (its config may have been replaced since).
            check_hf_checkpoint_size(folder, record["meta"]["params"])
            model, tokenizer, _ = load_hf_causal_lm(folder, device=device, context=HF_MAX_CONTEXT)
        return model, tokenizer, None
    model, tokenizer, meta = load_model(local_checkpoint(store, record["id"]), device=device)
    return model, tokenizer, None if meta.get("format") == HF_FORMAT else eos_id(tokenizer)


def tokenizer_fingerprint(tokenizer) -> str:
    """Models scored together must tokenize identically: compare vocabularies."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else tokenizer.hf_tokenizer.get_vocab()
    return hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest()


@ray.remote(max_restarts=3, max_task_retries=3)
class LossScorer:
    """Loads one or more models once, then scores shard after shard (or row ranges of shards) with
    the same windows for all.

    A score table holds `loss` (one model) or `prior_loss`, `cond_loss`,
    `score = prior_loss − cond_loss`, the spread of the per-token difference `diff_sd` and the
    `evidence` that ranks CoLoR-Filter's selection (two models). `score_shard` writes a shard's part;
    `score_rows` returns the table of a row range, for the driver to join into the shard's part.
    """

    def __init__(self, store_root: str, records: list[dict], threads: int, engine_options: dict, index: int = 0):
        if threads == 1:  # one scorer per core: the tokenizer's thread pool would compete with the others
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            os.environ["RAYON_NUM_THREADS"] = "1"
        torch.set_num_threads(max(1, threads))
        self.index = index
        self.store = Store(store_root)
        self.refused = None
        try:
            loaded = [load_for_scoring(self.store, r) for r in records]
        except DomainError as e:
            # A registered model's file refused: each call says why (an actor dying in __init__
            # would be restarted to die again, and its job would only learn that it died).
            self.refused = e
            return
        if len({tokenizer_fingerprint(t) for _, t, _ in loaded}) > 1:
            raise ValueError("the models use different tokenizers; they cannot be scored on the same windows")
        self.tokenizer, self.prepend = loaded[0][1], loaded[0][2]
        self.engine = DocumentLossEngine([m for m, _, _ in loaded], **engine_options)

    def _table(self, shard: int, parts: tuple, rows: tuple[int, int] | None = None,
               allowed: np.ndarray | None = None):
        if self.refused:
            raise self.refused
        t = self.store.read_parquet(*parts, columns=["id", "text", "source"])
        first = 0
        if rows is not None:
            first = rows[0]
            t = t.slice(rows[0], rows[1] - rows[0])
            allowed = None if allowed is None else allowed[rows[0]:rows[1]]
        # A document with no text, or one a restriction excludes, is not scored: NaN here, NULL in
        # the manifest, never selected.
        texts = ["" if skip else x for x, skip in zip(t["text"].to_pylist(), unscored(t["text"], allowed))]
        tokens = tokenize_documents(self.tokenizer, texts, prepend_id=self.prepend)
        for i, text in enumerate(texts):
            if not text:
                tokens[i] = []
        if len(self.engine.models) == 1:
            (loss,), n_tokens = self.engine.score(tokens)
            table = score_part(t["id"], shard, t["source"], n_tokens, -loss, loss=loss)
        else:
            pair = self.engine.score_difference(tokens)
            table = score_part(t["id"], shard, t["source"], pair.n_tokens, pair.prior_loss - pair.cond_loss,
                               prior_loss=pair.prior_loss, cond_loss=pair.cond_loss, diff_sd=pair.diff_sd,
                               evidence=evidence(pair))
        if first:
            table = table.set_column(table.schema.get_field_index("row"), "row",
                                     pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
        return table

    def _info(self, table) -> dict:
        dtype = self.engine.dtype
        return {"rows": table.num_rows, "tokens": int(pa.compute.sum(table["n_tokens"]).as_py() or 0),
                "actor": self.index, "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
                "node": node_id(), "cpu_s": actor_cpu(self)}

    def score_shard(self, shard: int, parts: tuple, out: tuple, allowed: np.ndarray | None = None) -> dict:
        table = self._table(shard, parts, allowed=allowed)
        self.store.write_parquet(table, *out)
        return self._info(table)

    def score_rows(self, shard: int, parts: tuple, first: int, end: int, allowed: np.ndarray | None = None) -> dict:
        table = self._table(shard, parts, (first, end), allowed)
        return {**self._info(table), "table": table}


def read_texts(store: Store, shard_parts: list[tuple], max_docs: int | None, seed: int,
               allowed=None, source: str | None = None) -> list[str]:
    """Up to max_docs non-empty texts, drawn uniformly at random (seeded) from the given shards;
    with `allowed` (per shard, a boolean mask of its rows or None), only the rows it allows; with
    `source`, only from the documents whose `source` is that value."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(shard_parts))
    texts: list[str] = []
    for i in order:
        docs = store.read_parquet(*shard_parts[i], columns=["text"] if source is None else ["text", "source"])
        if allowed is not None and allowed[i] is not None:
            docs = docs.filter(pa.array(allowed[i]))
        if source is not None:
            docs = docs.filter(pa.compute.equal(docs["source"], source))
        texts += docs["text"].filter(pa.array(~empty_mask(docs["text"]))).to_pylist()
        if max_docs and len(texts) >= 4 * max_docs:
            break
    if max_docs and len(texts) > max_docs:
        pick = rng.choice(len(texts), size=max_docs, replace=False)
        texts = [texts[j] for j in sorted(pick)]
    return texts



# What a Hugging Face loader reads from a checkpoint folder (weights, configs, tokenizers); nothing
# else of the folder (optimizer states, code) is read at all.
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken")
MAX_CHECKPOINT_FILES = 1000


@contextlib.contextmanager
def checked_checkpoint(path: str, access: Access) -> Iterator[str]:
    """A private copy of a tenant's checkpoint folder, for loading: each file the loader may read
    is opened through `access` (resolved and checked now, here on the worker), so a file that is a
    link out of the allowed roots or into the server's store is refused, and the loader reads the
    very bytes that were checked (no link swapped in later reaches it). Raises DomainError naming
    the file."""
    real = access.check_local(path)
    try:
        names = sorted(e.name for e in os.scandir(real) if e.name.endswith(CHECKPOINT_SUFFIXES)
                       and not e.name.startswith("."))
    except OSError as e:
        raise DomainError("not_a_checkpoint", f"{path} is not a readable directory ({e.strerror})",
                          {"field": "path"}) from None
    if "config.json" not in names:
        raise DomainError("not_a_checkpoint", f"{path} has no config.json: not a Hugging Face checkpoint "
                          "directory", {"field": "path"})
    if len(names) > MAX_CHECKPOINT_FILES:
        raise DomainError("bad_checkpoint", f"{path} holds more than {MAX_CHECKPOINT_FILES} files a loader "
                          "would read", {"field": "path"})
    with tempfile.TemporaryDirectory(prefix="thresher-checkpoint-") as private:
        for name in names:
            try:
                src = access.open_local(os.path.join(real, name), f"{name} (in {path})")
            except DomainError as e:
                raise DomainError(e.code, e.message, {**e.details, "field": "path", "file": name}) from None
            with src, open(os.path.join(private, name), "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
        yield private


MAX_HF_LAYERS = 1024  # more than any causal LM has; bounds the modules made to count parameters


def check_hf_checkpoint_size(path: str, max_params: int) -> int:
    """The parameters a Hugging Face checkpoint's config.json declares, counted before any weight is
    read; LimitExceeded past `max_params`. A rough count from the config's shape (embeddings and
    12·hidden² a layer) refuses a huge model at once; below it the model is built on the `meta`
    device (shapes without memory) and its parameters counted exactly."""
    from transformers import AutoConfig, AutoModelForCausalLM  # heavy import, only when asked

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable config is the checkpoint's fault
        raise ValueError(f"config.json: {e}") from None
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    rough = vocab * hidden + layers * 12 * hidden * hidden
    if layers > MAX_HF_LAYERS or rough > 2 * max_params:
        raise _too_large(f"config.json declares {layers:,} layers {hidden:,} wide with a vocabulary of {vocab:,}: "
                         f"about {rough:,} parameters", max_params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        raise _too_large(f"config.json declares {params:,} parameters ({4 * params / 2**30:.1f} GiB to load)",
                         max_params)
    return params


def _too_large(message: str, max_params: int) -> LimitExceeded:
    return LimitExceeded("path", message, max_params, "THRESHER_MAX_MODEL_PARAMS")


@ray.remote(max_retries=0)
def inspect_checkpoint(path: str, access: Access, max_params: int) -> dict:
    """Load a Hugging Face checkpoint directory once, to refuse a broken one at registration (a
    too large one before loading it)."""
    with checked_checkpoint(path, access) as folder:
        check_hf_checkpoint_size(folder, max_params)
        model, tokenizer, meta = load_hf_causal_lm(folder, context=HF_MAX_CONTEXT)
    return {**meta, "directory": path, "path": path, "context": model.context, "vocab_size": model.vocab_size,
            "params": sum(p.numel() for p in model.parameters())}


def inspect_hf_checkpoint(path: str, access: Access, max_params: int, timeout_s: float = 300) -> dict:
    """The checkpoint's metadata; DomainError if a file of it may not be read (LimitExceeded when it
    is too large), ValueError saying why it cannot be used otherwise. A worker that dies loading it
    (out of memory, killed) or a load past `timeout_s` is the checkpoint's failure too."""
    ref = inspect_checkpoint.options(**REQUEST_TASK.ray_options()).remote(path, access, max_params)
    try:
        return ray_get(ref, "loading the checkpoint", timeout=timeout_s)
    except RuntimeError as e:
        raise ValueError(f"cannot load a causal LM from {path}: {e}") from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as e:
        raise ValueError(f"cannot load a causal LM from {path}: the worker loading it died "
                         f"({type(e).__name__}; a model too large for a worker's memory does this)") from None
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ValueError(f"cannot load a causal LM from {path}: loading took longer than {timeout_s:g} s") from None
