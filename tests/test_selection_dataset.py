"""thresher.data.SelectionDataset over a real selection: exactly-once over ranks × workers, an order
independent of the worker count, per-epoch shuffles, mid-epoch resume, storage vs API, weights."""
from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from tests.corpus_gen import corpus
from thresher import Client
from thresher.data import SelectionDataset

BLOCK = 8


@pytest.fixture(scope="module")
def client(live_service):
    with Client(live_service.url, live_service.key) as c:
        yield c


@pytest.fixture(scope="module")
def sel(client, live_service):
    """A 50% random selection of a 1000-document pool in 5 shards of 200."""
    pool = client.corpora.upload(corpus(1000, seed=11, min_words=5, max_words=12), name="ds-pool")
    job = client.random(pool, fraction=0.5, seed=1).wait()
    man = job.manifest()
    selected = set(man.to_arrow(selected_only=True)["doc_id"].to_pylist())
    texts = {d["id"]: d["text"] for d in client.corpora.to_arrow(pool).to_pylist()}
    return {"pool": pool, "manifest": man, "selected": selected, "texts": texts,
            "storage": live_service.settings.store_root}


def make(sel, **kw):
    kw.setdefault("storage", sel["storage"])
    kw.setdefault("shuffle_buffer", 300)
    kw.setdefault("block_size", BLOCK)
    return SelectionDataset(sel["manifest"].id, seed=kw.pop("seed", 7), **kw)


def run(ds, workers: int) -> list[dict]:
    """What a training loop sees from one rank: the DataLoader's batches in order, flattened."""
    loader = DataLoader(ds, batch_size=BLOCK, num_workers=workers, collate_fn=lambda b: b)
    return [item for batch in loader for item in batch]


def global_order(sel, ranks: int, workers: int, **kw) -> list[str]:
    """Batches of all ranks interleaved step by step (as DDP consumes them)."""
    per_rank = [run(make(sel, rank=r, world_size=ranks, **kw), workers) for r in range(ranks)]
    batches = [[p[i:i + BLOCK] for i in range(0, len(p), BLOCK)] for p in per_rank]
    out = []
    for step in range(max(len(b) for b in batches)):
        for b in batches:
            if step < len(b):
                out += [x["doc_id"] for x in b[step]]
    return out


def test_two_ranks_two_workers_yield_each_selected_document_once(sel):
    items = []
    for rank in range(2):
        items += run(make(sel, rank=rank, world_size=2), workers=2)
    ids = [x["doc_id"] for x in items]
    assert len(ids) == len(sel["selected"]) == 500
    assert set(ids) == sel["selected"]
    assert all(x["text"] == sel["texts"][x["doc_id"]] for x in items)
    assert sorted(x["index"] for x in items) == list(range(500))


def test_same_seed_same_order_whatever_the_worker_count(sel):
    reference = global_order(sel, ranks=1, workers=0)
    assert reference != sorted(reference)                    # it is shuffled
    for ranks, workers in ((1, 1), (1, 3), (2, 2), (2, 0)):
        assert global_order(sel, ranks, workers) == reference, (ranks, workers)
    assert [x["index"] for x in run(make(sel), 0)] == list(range(500))


def test_epochs_and_seeds_change_the_order_and_buffer_bounds_the_mixing(sel):
    ds = make(sel)
    first = [x["doc_id"] for x in ds]
    ds.set_epoch(1)
    second = [x["doc_id"] for x in ds]
    assert set(first) == set(second) and first != second
    assert [x["doc_id"] for x in make(sel, seed=8)] != first
    ds.set_epoch(0)
    assert [x["doc_id"] for x in ds] == first
    plain = [x["doc_id"] for x in make(sel, shuffle=False)]
    assert plain == sorted(plain, key=lambda d: int(d[1:]))   # corpus order
    # The bounded buffer: each window (whole shards, >= shuffle_buffer documents) is permuted
    # within itself, so the epoch's first positions come from its first window's shards only.
    windows = ds._windows(0)
    assert len(windows) == 2 and windows[1][0] >= 300
    first_shards = {s.shard for s in windows[0][1]}
    assert {int(d[1:]) // 200 for d in first[:windows[1][0]]} == first_shards


def test_resume_mid_epoch_yields_exactly_the_rest(sel):
    ds = make(sel)
    ds.set_epoch(2)
    full = [x["doc_id"] for x in ds]
    ds2 = make(sel)
    ds2.set_epoch(2)
    it = iter(ds2)
    head = [next(it)["doc_id"] for _ in range(123)]
    state = ds2.state_dict()
    assert state["samples_seen"] == 123 and state["epoch"] == 2
    resumed = make(sel)
    resumed.load_state_dict(state)
    assert head + [x["doc_id"] for x in resumed] == full
    # Across 2 ranks × 2 workers: after 10 global steps (10 × 8 × 2 documents) the rest, once.
    rest = []
    for rank in range(2):
        d = make(sel, rank=rank, world_size=2)
        d.load_state_dict({**state, "samples_seen": 160})
        rest += [x["doc_id"] for x in run(d, workers=2)]
    assert sorted(rest) == sorted(full[160:])
    with pytest.raises(ValueError):
        make(sel, seed=99).load_state_dict(state)


def test_through_the_api_same_as_from_storage(sel, client):
    via_api = [x["doc_id"] for x in SelectionDataset(sel["manifest"], client=client, seed=7, shuffle_buffer=300,
                                                     block_size=BLOCK)]
    assert via_api == [x["doc_id"] for x in make(sel)]
    assert run(SelectionDataset(sel["manifest"], client=client, seed=7, shuffle_buffer=300, block_size=BLOCK,
                                rank=1, world_size=2), workers=2)[0]["text"]


def test_reweight_weights_ride_along(sel, client):
    scored = client.score(sel["pool"], client.train_model(
        sel["pool"], preset="tiny", tokens=20_000, vocab_size=300, batch_size=8, seq_len=32).wait().model_id).wait()
    rw = client.reweight(sel["pool"], losses=scored.manifest_id, strategy="quadratic", batch_size=50).wait()
    weights = {r["doc_id"]: r["weight"] for r in rw.manifest().to_arrow().to_pylist()}
    items = list(make(sel, weights=rw.manifest_id))
    assert len(items) == 500
    assert all(x["weight"] == pytest.approx(weights[x["doc_id"]]) for x in items)


def test_bad_arguments():
    with pytest.raises(ValueError):
        SelectionDataset("man_x")
    with pytest.raises(FileNotFoundError):
        SelectionDataset("man_missing", storage="/nonexistent-store")


def test_a_worker_keeps_only_its_share_of_a_window(sel):
    """Texts are taken only for the worker's own positions, one shard at a time, so what a worker
    holds is about a window's documents / (ranks × workers)."""
    ds = make(sel, rank=1, world_size=4)
    taken = []
    read = ds.source.docs
    ds.source.docs = lambda s, rows, columns: (taken.append((s.count, len(rows))), read(s, rows, columns))[1]
    items = list(ds)
    assert sum(n for _, n in taken) == len(items) == len(ds)
    windows = ds._windows(0)
    assert len(taken) <= sum(len(w[1]) for w in windows)                # one read per shard of a window
    largest = max(sum(s.count for s in w[1]) for w in windows)
    assert max(n for _, n in taken) <= largest / 4 + BLOCK
