"""Where everything lives in storage: the one module that builds and parses storage paths.

A path is a tuple of parts under the store's root (`Store.path(*parts)` joins them), so the same
layout holds on a local directory and under an object-store prefix:

    corpora/<cor>/shard-NNNNN.parquet       a corpus: id, text, source, in input order
    jobs/<job>/scores/part-NNNNN.parquet    a job's scores, one part per corpus shard (apart from
                                            the documents: scoring again never rewrites a corpus)
    jobs/<job>/…                            a job's other intermediate files (named below)
    manifests/<man>/part-NNNNN.parquet      a manifest: one part per corpus shard NNNNN
    cache/random-arms/<key>.json            evaluate's random-arm proxies, reused by later evaluations
    models/<mdl>/…                          a trained model's checkpoint (meta.json written last)
    curricula/<cur>/…                       a curriculum run: doc ids, state, one plan per epoch
    uploads/<token>                         an upload's body, until a worker has ingested it

Every file is written under its final name by exactly one task, so a task whose output exists is
done; files whose name starts with '.' are temporaries and never listed.
"""
from __future__ import annotations

from typing import Protocol

Parts = tuple[str, ...]

CORPUS_SHARD_PREFIX = "shard-"
PART_PREFIX = "part-"
PARQUET = ".parquet"
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")  # meta.json last


class Lister(Protocol):
    def list(self, *parts: str, suffix: str = "") -> list[str]: ...


def _numbered(prefix: str, n: int, suffix: str = PARQUET) -> str:
    return f"{prefix}{n:05d}{suffix}"


def number_of(name: str, prefix: str, suffix: str = PARQUET) -> int | None:
    """NNNNN of `<prefix>NNNNN<suffix>`, or None for any other name."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    digits = name[len(prefix):len(name) - len(suffix)]
    return int(digits) if digits.isdigit() else None


def _listed(store: Lister, folder: Parts, prefix: str, suffix: str = PARQUET) -> list[tuple[int, Parts]]:
    found = ((number_of(n, prefix, suffix), n) for n in store.list(*folder, suffix=suffix))
    return sorted((i, (*folder, n)) for i, n in found if i is not None)


# -- corpora -------------------------------------------------------------------------------------

def corpora() -> Parts:
    """The folder of all corpora (the startup janitor looks for ones no catalog row names)."""
    return ("corpora",)


def corpus(corpus_id: str) -> Parts:
    return (*corpora(), corpus_id)


def corpus_shard(corpus_id: str, shard: int) -> Parts:
    return (*corpus(corpus_id), _numbered(CORPUS_SHARD_PREFIX, shard))


def corpus_shards(store: Lister, corpus_id: str) -> list[tuple[int, Parts]]:
    """(shard number, path) of a corpus's shards, in row order."""
    return shards_in(store, corpus(corpus_id))


def shard_in(folder: Parts, shard: int, unit: tuple[int, int] | None = None) -> Parts:
    """Corpus shard `shard` under any folder (ingestion writes to a folder it is given).

    A corpus registered from many files is ingested in units (input file, byte range), each by its
    own task: its shards are `shard-FFFFF-RRRRR-NNNNN.parquet`, so units never collide, a retried unit
    overwrites its own shards, and name order is row order (file by file, range by range)."""
    if unit is None:
        return (*folder, _numbered(CORPUS_SHARD_PREFIX, shard))
    return (*folder, f"{CORPUS_SHARD_PREFIX}{unit[0]:05d}-{unit[1]:05d}-{shard:05d}{PARQUET}")


def shard_key(name: str) -> tuple[int, ...] | None:
    """The numbers in a corpus shard's name (one, or file, range, shard), or None for another name."""
    if not (name.startswith(CORPUS_SHARD_PREFIX) and name.endswith(PARQUET)):
        return None
    fields = name[len(CORPUS_SHARD_PREFIX):-len(PARQUET)].split("-")
    return tuple(int(f) for f in fields) if len(fields) in (1, 3) and all(f.isdigit() for f in fields) else None


def shards_in(store: Lister, folder: Parts) -> list[tuple[int, Parts]]:
    """(shard number, path) of the corpus shards in a folder, in row order. A shard's number is its
    position: manifests and score parts are numbered by it."""
    keyed = sorted((k, n) for n in store.list(*folder, suffix=PARQUET) if (k := shard_key(n)) is not None)
    return [(i, (*folder, n)) for i, (_, n) in enumerate(keyed)]


def unit_of(shard: Parts) -> tuple[int, int] | None:
    """(file, range) of a shard written by a unit of a multi-file ingestion."""
    key = shard_key(shard[-1])
    return key[:2] if key and len(key) == 3 else None


# -- jobs ----------------------------------------------------------------------------------------

def job(job_id: str) -> Parts:
    return ("jobs", job_id)


# A job's other files, by what they hold.
JOB_FILES = {
    "dsir_log_ratio": ("dsir", "log_ratio.npy"),        # DSIR: log p_target − log p_pool per bucket
    "embeddings": ("embeddings.npz",),                  # Projektor: source and validation embeddings
    "tokenizer": ("tokenizer.json",),                   # Projektor: the pilots' shared tokenizer
    "pilots": ("pilots.json",),                         # Projektor: measured pilots with their OT
    "projection": ("projection.json",),                 # Projektor: the fitted projection (/predict)
    "plot": ("plot.png",),                              # Projektor: the projection's plot
    "inputs": ("inputs.json",),                         # ingest: the files a registration matched
    "clusters": ("dedup", "clusters.json"),             # dedup: written last by the cluster stage
    "classifier_model": ("classifier", "model.bin"),    # classifier, embedding (BETR): the fastText model
    "classifier_report": ("classifier", "report.json"),  # ... its held-out check (written after the model)
    "target_embeddings": ("embedding", "target.npy"),   # embedding: the target's unit embeddings
    "betr_sample": ("embedding", "sample.parquet"),     # embedding (BETR): the pool sample's similarities
}


def job_file(job_id: str, what: str) -> Parts:
    """The job's file `what` (a key of JOB_FILES)."""
    return (*job(job_id), *JOB_FILES[what])


def score_part(job_id: str, shard: int) -> Parts:
    return (*job(job_id), "scores", _numbered(PART_PREFIX, shard))


def score_parts(store: Lister, job_id: str) -> list[Parts]:
    return [p for _, p in _listed(store, (*job(job_id), "scores"), PART_PREFIX)]


def dsir_counts(job_id: str, role: str, shard: int) -> Parts:
    """DSIR's hashed n-gram totals of one shard of the pool or target."""
    return (*job(job_id), "dsir", _numbered(f"{role}-", shard, ".npy"))


def corpus_shard_part(job_id: str, what: str, corpus_index: int, shard: int) -> Parts:
    """A job's per-shard file `what` (signatures, ngrams) of shard `shard` of the job's
    `corpus_index`-th corpus (0 the pool, then the corpora it is compared against)."""
    return (*job(job_id), what, f"c{corpus_index:03d}-{shard:05d}{PARQUET}")


def corpus_shard_parts(store: Lister, job_id: str, what: str) -> list[Parts]:
    """Every file `corpus_shard_part(job_id, what, …)` wrote, in (corpus, shard) order."""
    folder = (*job(job_id), what)
    found = sorted(n for n in store.list(*folder, suffix=PARQUET) if n.startswith("c") and not n.startswith("."))
    return [(*folder, n) for n in found]


def band_part(job_id: str, band: int) -> Parts:
    """Dedup: the candidate pairs of one LSH band (or, band -1, of equal text hashes)."""
    return (*job(job_id), "bands", f"band-{band + 1:05d}{PARQUET}")


def band_parts(store: Lister, job_id: str) -> list[Parts]:
    return [p for _, p in _listed(store, (*job(job_id), "bands"), "band-")]


def ingested_unit(job_id: str, unit: tuple[int, int]) -> Parts:
    """Written last by an ingestion unit (its statistics): the unit is done."""
    return (*job(job_id), "units", f"unit-{unit[0]:05d}-{unit[1]:05d}.json")


def pilot_result(job_id: str, index: int) -> Parts:
    return (*job(job_id), "pilots", f"pilot-{index:04d}.json")


def filter_mask(job_id: str, shard: int) -> Parts:
    """A filter's rows to keep of corpus shard NNNNN: column `selected`, one value per row."""
    return (*job(job_id), "filter", _numbered("mask-", shard))


def random_arm(key: str) -> Parts:
    """An evaluate's random-arm proxy (its figures and the job that trained it), found again by
    later evaluations of the same pool, validation set, size, seed and proxy (`key`, their digest)."""
    return ("cache", "random-arms", f"{key}.json")


# -- manifests -----------------------------------------------------------------------------------

def manifest(manifest_id: str) -> Parts:
    return ("manifests", manifest_id)


def manifest_part(manifest_id: str, shard: int) -> Parts:
    return (*manifest(manifest_id), _numbered(PART_PREFIX, shard))


def manifest_parts(store: Lister, manifest_id: str) -> list[tuple[int, Parts]]:
    """(shard number, path) of a manifest's parts, in shard order."""
    return _listed(store, manifest(manifest_id), PART_PREFIX)


# -- models and curriculum runs ------------------------------------------------------------------

def model(model_id: str) -> Parts:
    return ("models", model_id)


def model_file(model_id: str, name: str) -> Parts:
    """One of a checkpoint's MODEL_FILES."""
    return (*model(model_id), name)


def model_meta(model_id: str) -> Parts:
    """Written last: a checkpoint whose meta.json exists is complete."""
    return model_file(model_id, MODEL_FILES[-1])


def curriculum(run_id: str) -> Parts:
    return ("curricula", run_id)


def curriculum_docs(run_id: str) -> Parts:
    """The run's document ids: index i of the scheduler is row i."""
    return (*curriculum(run_id), "docs.parquet")


def curriculum_state(run_id: str) -> Parts:
    """The scheduler's whole state, rewritten atomically after every change."""
    return (*curriculum(run_id), "state.parquet")


def curriculum_epoch(run_id: str, epoch: int) -> Parts:
    return (*curriculum(run_id), _numbered("epoch-", epoch))


# -- operations ----------------------------------------------------------------------------------

def probes() -> Parts:
    return (".probe",)


def probe(token: str) -> Parts:
    """A throwaway file /readyz writes and deletes to check the store is writable."""
    return (*probes(), token)


def uploads() -> Parts:
    """Upload spool files kept in the store while they are parsed."""
    return ("uploads",)


def upload(token: str) -> Parts:
    """An upload's body, spooled into storage so that a worker (not the API process) parses it."""
    return (*uploads(), token)
