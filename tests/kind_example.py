"""A job kind written the way a new one is: its spec, one plain function per shard, and its `run`
on the engine's helpers and workers.jobs.common (tests/test_kinds.py registers and drives it).
`word_count` ranks a pool's documents by their words; documents under `min_words` are not scored."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from scoring.hashing import word_counts
from storage import layout
from storage.fs import Store
from storage.manifests import score_part
from workers.driver.engine import JobContext
from workers.jobs.common import empty_mask, finish_selection
from workers.kind import BOOKKEEPING, SHARD_TASK, JobKind, small_inputs
from workers.runtime import node_id
from workers.specs import CorpusId, Select, SelectMode, StrictModel


class WordCountSpec(StrictModel):
    pool: CorpusId
    select: Select
    min_words: int = Field(1, ge=1, le=1000, description="documents with fewer words are not scored")
    mode: SelectMode = "global"


def count_words(store: Store, shard: int, parts: tuple, out: tuple, min_words: int) -> dict:
    t = store.read_parquet(*parts, columns=["id", "text", "source"])
    words = word_counts(t["text"])
    score = np.asarray(words, dtype=np.float64)
    score[empty_mask(t["text"]) | (score < min_words)] = np.nan
    store.write_parquet(score_part(t["id"], shard, t["source"], words, score), *out)
    return {"rows": t.num_rows, "node": node_id()}


def run_word_count(ctx: JobContext, spec: WordCountSpec) -> dict:
    ctx.corpus(spec.pool)
    ctx.map_shards("count", count_words, ctx.corpus_shards(spec.pool), spec.min_words,
                   out=lambda s: layout.score_part(ctx.job_id, s))
    return finish_selection(ctx, "word_count", spec.pool, spec.select, spec.mode)


KIND = JobKind("word_count", WordCountSpec, run_word_count, "the pool's longest documents (a test kind)",
               stages={"count": SHARD_TASK, "select": BOOKKEEPING}, light=small_inputs)
