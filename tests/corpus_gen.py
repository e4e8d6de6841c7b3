"""Small synthetic multi-domain corpora the tests generate themselves."""
from __future__ import annotations

import csv
import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

COMMON = ("the of and a to in is was that for it with as on be at by this had not are but from or have an "
          "they which one you were all we her she there would their will when who him been has more if no "
          "out so said what up its about into than them can only other new some could time these two may").split()
DOMAINS = {
    "cooking": ("flour butter sugar oven bake whisk simmer onion garlic pepper salt recipe dough knead "
                "saucepan skillet roast broth tomato basil oregano cinnamon yeast batter frosting grill "
                "marinade vinegar olive spatula ladle boil fry chop slice dice mince stir").split(),
    "finance": ("market stock bond yield equity dividend portfolio interest inflation credit debt asset "
                "liquidity hedge futures option broker revenue profit margin earnings capital fund bank "
                "loan mortgage currency exchange trading volatility index valuation audit tax").split(),
    "astronomy": ("star galaxy planet orbit telescope nebula comet asteroid meteor eclipse solar lunar "
                  "gravity cosmic quasar pulsar supernova redshift spectrum light year universe moon "
                  "crater satellite constellation observatory photon neutron dwarf giant cluster").split(),
}


def document(rng: random.Random, domain: str, words: int) -> str:
    vocab = DOMAINS[domain]
    return " ".join(rng.choice(vocab) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(words)).capitalize() + "."


def corpus(n: int, seed: int = 0, domains=None, min_words: int = 20, max_words: int = 60, prefix: str = "d") -> list[dict]:
    rng = random.Random(seed)
    domains = domains or list(DOMAINS)
    return [{"id": f"{prefix}{i}", "text": document(rng, d, rng.randint(min_words, max_words)), "source": d}
            for i, d in enumerate(rng.choice(domains) for _ in range(n))]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def csv_bytes(docs, columns=("id", "text", "source")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for d in docs:
        writer.writerow(["" if d.get(c) is None else d[c] for c in columns])
    return out.getvalue().encode()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def encode(docs, fmt: str) -> bytes:
    if fmt == "jsonl":
        return jsonl(docs)
    if fmt == "csv":
        return csv_bytes(docs)
    return parquet_bytes(pa.Table.from_pylist(docs))
