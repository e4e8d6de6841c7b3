"""What the cleaning kinds (dedup, decontaminate, quality) share: document positions that span
several corpora, and the manifest's leading columns."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from workers.specs import CorpusId, StrictModel

# A document's position as one BIGINT: corpus index (0 the pool, then the corpora it is compared
# against) · 2^56 + shard · 2^28 + row. Sorting by it is sorting by (corpus, shard, row).
CORPUS_SHIFT = 56
SHARD_SHIFT = 28
MAX_CORPORA = 2 ** (63 - CORPUS_SHIFT) - 1


class PoolAgainst(StrictModel):
    """A pool compared with other corpora."""
    pool: CorpusId
    against: list[CorpusId] = Field(default_factory=list, max_length=MAX_CORPORA)

    @model_validator(mode="after")
    def _distinct(self):
        if self.pool in self.against or len(set(self.against)) != len(self.against):
            raise ValueError("against must name distinct corpora other than the pool")
        return self


def uids(corpus_index: int, shard: int, n: int) -> np.ndarray:
    return (np.int64(corpus_index) << CORPUS_SHIFT) + (np.int64(shard) << SHARD_SHIFT) + np.arange(n, dtype=np.int64)


def corpus_of_uid_sql(column: str) -> str:
    return f"({column} >> {CORPUS_SHIFT})"


def doc_columns(docs: pa.Table, corpus_id: str | None, shard: int, n_tokens) -> dict:
    """The leading columns of a cleaning manifest's part, as every manifest has them (without
    `corpus_id` when it is None)."""
    n = docs.num_rows
    cols = {"doc_id": docs["id"], "corpus_id": pa.array([corpus_id] * n, pa.string()),
            "shard": pa.array(np.full(n, shard, dtype=np.int32)), "row": pa.array(np.arange(n, dtype=np.int64)),
            "source": docs["source"], "n_tokens": pa.array(np.asarray(n_tokens, dtype=np.int64)),
            "n_chars": pc.utf8_length(docs["text"]).cast(pa.int64())}
    if corpus_id is None:
        del cols["corpus_id"]
    return cols
