"""The Python client (`thresher.Client`) against the live test service: every method, real HTTP."""
from __future__ import annotations

import gzip
import io
import json
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.corpus_gen import corpus, jsonl
from thresher import Client, Corpus, InvalidArgument, Job, Manifest, ThresherError

TINY = {"preset": "tiny", "tokens": 30_000, "vocab_size": 300, "batch_size": 8, "seq_len": 32}
FAST_FT = {"epochs": 1, "warmup_steps": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def client(live_service):
    with Client(live_service.url, live_service.key) as c:
        yield c


@pytest.fixture(scope="module")
def pool(client):
    return client.corpora.upload(corpus(300, seed=5, min_words=10, max_words=25), name="pool")


@pytest.fixture(scope="module")
def target(client):
    return client.corpora.upload(corpus(60, seed=6, domains=["astronomy"], prefix="t"), name="target")


@pytest.fixture(scope="module")
def selection(client, pool, target):
    return client.dsir(pool, target, fraction=0.1).wait()


def test_upload_from_every_kind_of_source(client, tmp_path):
    rows = corpus(50, seed=1)
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(rows)))
    table = pa.Table.from_pylist(rows)
    import pandas as pd
    sources = {
        "path": path,
        "file object without a name": io.BytesIO(gzip.compress(jsonl(rows))),   # the server sniffs it
        "text file object": io.StringIO(jsonl(rows).decode()),
        "bytes": jsonl(rows),
        "generator of dicts": (r for r in rows),
        "arrow table": table,
        "record batch reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7)),
        "pandas": pd.DataFrame(rows),
    }
    for label, data in sources.items():
        c = client.corpora.upload(data, name=label)
        assert isinstance(c, Corpus) and c.state == "ready", label
        assert c.num_docs == 50 and c.ids_generated is False, label
        assert sorted(d["id"] for d in client.corpora.to_arrow(c).to_pylist()) == sorted(r["id"] for r in rows), label


def test_upload_streams_more_rows_than_one_chunk(client):
    """A generator body of several 1 MiB chunks and a multi-row-group Parquet body arrive whole."""
    big = [{"id": f"b{i}", "text": "word " * 100 + str(i)} for i in range(5000)]    # ~2.5 MB of JSONL
    c = client.corpora.upload(iter(big), name="big")
    assert c.num_docs == 5000 and c.num_shards == 25
    c2 = client.corpora.upload(pa.Table.from_pylist(big * 30)[:150_000].drop_columns(["id"]), name="big-parquet")
    assert c2.num_docs == 150_000 and c2.ids_generated is True


def test_documents_without_ids_say_so(client):
    c = client.corpora.upload([{"text": "a"}, {"text": "b"}], name="no-ids")
    assert c.ids_generated is True and c.refresh().ids_generated is True
    assert [d["id"] for d in c.sample(2)] == ["0000000000", "0000000001"]


def test_corpora_list_get_sample_download_shards_delete(client, pool, tmp_path):
    assert pool.id in {c.id for c in client.corpora.list(limit=1000)}
    assert pool.id in {c.id for c in client.corpora.iter()}
    page = client.corpora.list(limit=1)
    assert len(page) == 1 and page.next_cursor
    assert client.corpora.list(limit=1, cursor=page.next_cursor)[0].id != page[0].id
    got = client.corpora.get(pool.id)
    assert got.num_docs == 300 and sum(got.sources.values()) == 300
    assert [d["id"] for d in client.corpora.sample(pool, 3)] == ["d0", "d1", "d2"]
    out = client.corpora.download(pool, tmp_path / "pool.jsonl", format="jsonl")
    assert len(out.read_text().splitlines()) == 300
    shards = client.corpora.shards(pool)
    assert [s["shard"] for s in shards] == [0, 1] and sum(s["num_rows"] for s in shards) == 300
    first = client.corpora.read_shard(pool, 1, columns=["id", "text"])
    assert first.column_names == ["id", "text"] and first["id"][0].as_py() == "d200"
    tmp = client.corpora.upload([{"text": "x"}], name="doomed")
    tmp.delete()
    with pytest.raises(ThresherError) as e:
        client.corpora.get(tmp.id)
    assert e.value.status == 404 and e.value.code == "not_found" and e.value.details["id"] == tmp.id


def test_register_by_uri_and_wait(client, live_service):
    f = live_service.allowed_root / "reg.jsonl"
    f.write_bytes(jsonl(corpus(30, seed=9)))
    c = client.corpora.register(f"file://{f}", name="registered")
    assert c.state == "ingesting" and c.job_id
    assert c.wait(timeout=120).num_docs == 30
    with pytest.raises(ThresherError) as e:
        client.corpora.register("/etc/passwd", name="nope")
    assert e.value.status == 403 and e.value.details["field"] == "uri"


def test_job_wait_events_list_and_progress_bar(client, pool, target, capsys):
    job = client.dsir(pool, target, count=20, seed=3)
    assert isinstance(job, Job) and job.kind == "dsir" and job.spec["select"]["count"] == 20
    seen = list(job.events())
    assert seen[-1].state == "succeeded" and all(isinstance(j, Job) for j in seen)
    done = job.wait(progress=True)
    assert done.state == "succeeded" and done.manifest_id and done.summary["num_selected"] == 20
    assert "dsir" in capsys.readouterr().err      # the tqdm bar
    assert job.id in {j.id for j in client.jobs.list(kind="dsir")}
    assert job.id in {j.id for j in client.jobs.iter(state="succeeded")}
    assert client.jobs.get(job.id).finished_at


def test_idempotent_submit(client, pool):
    a = client.random(pool, fraction=0.5, idempotency_key="k-1")
    b = client.random(pool, fraction=0.5, idempotency_key="k-1")
    assert a.id == b.id
    with pytest.raises(ThresherError) as e:
        client.random(pool, fraction=0.4, idempotency_key="k-1")
    assert e.value.status == 409 and e.value.code == "idempotency_conflict"
    a.wait()


def test_count_larger_than_pool_warns(client, pool):
    job = client.random(pool, count=10_000).wait()
    assert job.summary["num_selected"] == 300
    assert any("10000" in w and "300" in w for w in job.summary["warnings"])


def test_cancel_returns_the_state_after_the_cancel(client, pool):
    job = client.train_model(pool, preset="tiny", tokens=50_000_000)
    stopped = job.cancel()
    assert stopped.state == "cancelled"
    with pytest.raises(ThresherError) as e:
        stopped.wait()
    assert e.value.code in ("cancelled", "job_cancelled") or e.value.details["state"] == "cancelled"


def test_spec_errors_and_unknown_ids_raise_thresher_error(client, pool):
    with pytest.raises(ThresherError) as e:
        client.dsir(pool, "cor_missing", fraction=0.1)
    assert e.value.status == 404 and e.value.details["field"] == "spec.target"
    with pytest.raises(ThresherError) as e:
        client.random(pool, fraction=2.0)
    assert e.value.status == 422 and e.value.details["field"] == "spec.select.fraction"
    with pytest.raises(ValueError):
        client.random(pool)


def test_manifests(client, selection, tmp_path):
    man = selection.manifest()
    assert isinstance(man, Manifest) and man.num_rows == 300 and man.num_selected == 30
    assert man.id in {m.id for m in client.manifests.list(limit=1000)}
    assert man.id in {m.id for m in client.manifests.iter()}
    t = man.to_arrow()
    assert t.num_rows == 300 and {"doc_id", "score", "rank", "selected"} <= set(t.column_names)
    assert man.to_arrow(selected_only=True).num_rows == 30
    con = duckdb.connect()
    man.to_duckdb(con, "m")
    assert con.execute("SELECT count(*) FROM m WHERE selected").fetchone()[0] == 30
    csv = man.download(tmp_path / "sel.csv", format="csv", selected_only=True)
    assert len(csv.read_text().splitlines()) == 31
    raw = client.manifests.download(man.id)
    assert pq.read_table(pa.BufferReader(raw)).num_rows == 300
    shards = man.shards()
    assert sum(s["num_selected"] for s in shards) == 30
    assert client.manifests.read_shard(man.id, shards[0]["shard"]).num_rows == shards[0]["num_selected"]
    exported = man.export(name="chosen").wait()
    chosen = client.corpora.get(exported.corpus_id)
    assert chosen.name == "chosen" and chosen.num_docs == 30


def test_query_returns_arrow(client, selection):
    t = client.query("SELECT source, count(*) AS n, avg(score) AS s FROM m WHERE selected GROUP BY 1 ORDER BY 2 DESC",
                     {"m": selection.manifest_id})
    assert t.column_names == ["source", "n", "s"]
    assert t.schema.field("n").type == pa.int64() and t.schema.field("s").type == pa.float64()
    assert sum(t["n"].to_pylist()) == 30
    limited = client.query("SELECT doc_id FROM m", {"m": selection.manifest()}, limit=5)
    assert limited.num_rows == 5 and limited.schema.metadata[b"truncated"] == b"true"
    empty = client.query("SELECT doc_id FROM m WHERE false", {"m": selection.manifest_id})
    assert empty.num_rows == 0 and empty.column_names == ["doc_id"]
    with pytest.raises(ThresherError) as e:
        client.query("DROP TABLE m", {"m": selection.manifest_id})
    assert e.value.status == 403 and e.value.details["field"] == "sql"


def test_models_score_reweight_evaluate(client, pool, selection, target):
    trained = client.train_model(pool, **TINY).wait()
    model = client.models.get(trained.model_id)
    assert model.source and model.id in {m.id for m in client.models.list()}
    assert model.id in {m.id for m in client.models.iter()}
    scored = client.score(pool, model).wait()
    assert scored.manifest().num_rows == 300
    rw = client.reweight(pool, losses=scored.manifest_id, strategy="linupper", batch_size=32).wait()
    assert "weight" in {c["name"] for c in rw.manifest().columns}
    ev = client.evaluate(selection.manifest_id, target, proxy={**TINY, "tokens": 10_000}).wait()
    assert "relative_gain" in ev.summary or "selection" in ev.summary


def test_model_register(client, live_service, tmp_path):
    with pytest.raises(ThresherError) as e:
        client.models.register("x", "/etc")
    assert e.value.status == 403 and e.value.details["field"] == "path"
    (live_service.allowed_root / "empty-ckpt").mkdir()
    with pytest.raises(ThresherError) as e:
        client.models.register("x", str(live_service.allowed_root / "empty-ckpt"))
    assert e.value.status == 422 and e.value.code == "not_a_checkpoint"


def test_color_filter(client, pool, target):
    job = client.color_filter(pool, target, fraction=0.1, prior={"train": TINY},
                              conditional={"finetune": FAST_FT}).wait(timeout=600)
    assert job.manifest().num_selected == 30


def test_projection_predict_and_plot(client, tmp_path):
    from tests.test_projection_api import spec
    ids = [client.corpora.upload(corpus(40, seed=80 + i, domains=[d]), name=d).id
           for i, d in enumerate(["cooking", "finance", "astronomy"])]
    val = client.corpora.upload(corpus(20, seed=90, domains=["astronomy"]), name="val")
    s = spec(ids, val.id)
    job = client.projection(s.pop("sources"), s.pop("validation"), **s).wait()
    preds = job.predict([[1, 0, 0], [0, 0, 1]], [4000])
    assert len(preds) == 2 and preds[1]["predicted"] < preds[0]["predicted"]
    png = client.projections.plot(job.id, tmp_path / "p.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").read_bytes() == png


def test_curricula(client, pool):
    job = client.curriculum(pool, "seta", epochs=2, prune_ratio=0.3, num_groups=3, seed=0).wait()
    run = client.curricula.get(job.curriculum_id)
    assert run.method == "seta" and run.epoch == 0 and run.num_samples == 300
    plan = run.plan(0)
    assert plan.epoch == 0 and len(plan.doc_ids) == len(set(plan.doc_ids)) and plan.weights is None
    after = run.post_losses(0, {d: 1.0 + i % 7 for i, d in enumerate(plan.doc_ids)})
    assert after.losses_posted == len(plan.doc_ids)
    with pytest.raises(ThresherError) as e:
        client.curricula.post_losses(run.id, 0, [("nope", 1.0)])
    assert 400 <= e.value.status < 500
    assert len(client.curricula.epoch(run.id, 1).doc_ids) > 0


def test_health_and_ready(client):
    assert client.health() == {"status": "ok"}
    assert client.ready()["status"] == "ready"


def test_unreachable_server_retries_then_says_so():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises(ThresherError) as e:
        c.corpora.list()
    assert e.value.code == "unreachable" and "thresher serve" in e.value.message
    assert time.monotonic() - t0 >= 0.3          # slept 0.1 + 0.2 between three attempts


def test_json_body_without_content_type_and_malformed_json(live_service):
    """curl -d sends form-urlencoded: the body is read as JSON; bad JSON names no field offset."""
    import httpx
    h = {"Authorization": f"Bearer {live_service.key}"}
    r = httpx.post(f"{live_service.url}/v1/jobs", headers={**h, "content-type": "application/json"},
                   content=b'{"kind": "random", "spec": {')
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_json"
    assert r.json()["error"]["details"]["field"] == "body" and "character" in r.json()["error"]["message"]
    r = httpx.post(f"{live_service.url}/v1/query", headers={**h, "content-type": "application/x-www-form-urlencoded"},
                   content=json.dumps({"sql": "SELECT 1", "tables": {}}).encode())
    assert r.status_code == 200, r.text


def test_docs_are_served_offline(live_service):
    import httpx
    html = httpx.get(f"{live_service.url}/docs").text
    assert "cdn" not in html.lower() and "/static/swagger-ui/swagger-ui-bundle.js" in html
    js = httpx.get(f"{live_service.url}/static/swagger-ui/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


def test_oversized_file_upload_answers_413(client, tmp_path, live_service):
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:                      # over the test service's 5 MB limit
        for i in range(60_000):
            f.write(json.dumps({"id": f"x{i}", "text": "lorem ipsum dolor " * 5}).encode() + b"\n")
    with big.open("rb") as f:
        with pytest.raises(ThresherError) as e:
            client.corpora.upload(f, name="too-big")
    assert e.value.status == 413 and e.value.code == "payload_too_large"


def test_wait_with_a_timeout(client, pool):
    job = client.train_model(pool, preset="tiny", tokens=50_000_000)
    with pytest.raises(TimeoutError):
        job.wait(timeout=1)
    assert job.cancel().state == "cancelled"


def test_downloads_take_the_format_from_the_file_name(client, pool, selection, tmp_path):
    import csv as csvmod

    import zstandard
    man = selection.manifest()
    rows = [json.loads(line) for line in pool.download(tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and {"id", "text"} <= set(rows[0])
    with gzip.open(pool.download(tmp_path / "p.jsonl.gz"), "rt") as f:    # compressed here, as named
        assert [json.loads(line) for line in f] == rows
    raw = zstandard.ZstdDecompressor().stream_reader(open(pool.download(tmp_path / "p.csv.zst"), "rb")).read()
    assert next(csvmod.reader(io.StringIO(raw.decode())))[:2] == ["id", "text"]
    header, *lines = man.download(tmp_path / "m.csv", selected_only=True).read_text().splitlines()
    assert "doc_id" in header and len(lines) == 30
    assert len(client.manifests.download(man.id, tmp_path / "m.ndjson").read_text().splitlines()) == 300
    assert pq.read_table(man.download(tmp_path / "m.parquet")).num_rows == 300
    assert pq.read_table(man.download(tmp_path / "m")).num_rows == 300               # no suffix: Parquet
    assert [json.loads(x)["doc_id"] for x in man.download(tmp_path / "m.txt", format="jsonl").read_text().splitlines()]
    for path, fmt in (("c.csv", "jsonl"), ("c.jsonl.gz", "parquet"), ("c.txt", None)):
        with pytest.raises(InvalidArgument) as e:
            man.download(tmp_path / path, format=fmt)
        assert isinstance(e.value, ThresherError) and e.value.details["field"] == "format"
        assert path in e.value.message and not (tmp_path / path).exists()


def test_misspelt_keyword_arguments_raise_thresher_error_with_a_suggestion(client, pool, target):
    with pytest.raises(InvalidArgument, match="unknown keyword argument 'fracton'; did you mean 'fraction'"):
        client.random(pool, fracton=0.1)
    with pytest.raises(ThresherError) as e:      # other spec fields: the server names them
        client.dsir(pool, target, fraction=0.1, sead=3)
    assert e.value.status == 422 and e.value.details["field"] == "spec.sead"
    assert e.value.message == "unknown field 'sead' in spec; did you mean 'seed'?"


def test_names_and_job_ids_resolve_where_ids_are_expected(client, selection, live_service, tmp_path):
    from tests.test_cli_live import hf_checkpoint
    uniq = client.corpora.upload(corpus(20, seed=11), name="by-name")
    job = client.random("by-name", count=5)
    assert job.spec["pool"] == uniq.id
    assert job.resolved == [{"field": "spec.pool", "given": "by-name", "id": uniq.id}]
    assert client.corpora.get("by-name").id == uniq.id and len(client.corpora.sample("by-name", 3)) == 3
    job.wait()
    # a manifest by the id of the job that wrote it, in paths and in queries
    assert client.manifests.get(selection.id).id == selection.manifest_id
    assert client.query("SELECT count(*) AS n FROM m", {"m": selection.id})["n"].to_pylist() == [300]
    ckpt = hf_checkpoint(live_service.allowed_root / "named-ckpt", ["a b c d"] * 20)
    model = client.models.register("named-ckpt", str(ckpt))
    assert client.models.get("named-ckpt").id == model.id
    twice = [client.corpora.upload(corpus(5, seed=i), name="twice").id for i in (1, 2)]
    with pytest.raises(ThresherError) as e:
        client.random("twice", count=1)
    assert e.value.status == 404 and e.value.code == "ambiguous_name" and e.value.details["field"] == "spec.pool"
    assert set(e.value.details["matches"]) == set(twice) and all(i in e.value.message for i in twice)
    with pytest.raises(ThresherError) as e:
        client.corpora.get("no-such-corpus")
    assert e.value.status == 404 and e.value.message == "no corpus has the id or the name 'no-such-corpus'"


def test_submit_any_kind_the_service_lists_through_a_generated_method(client, pool, target):
    """Kinds without a hand-written method are methods too, made from GET /v1/kinds: positional
    arguments are the spec's required fields in the schema's order, records become ids."""
    import inspect

    from service.schemas import PUBLIC_KINDS
    assert set(client.kinds()) == PUBLIC_KINDS
    assert str(inspect.signature(client.decontaminate)).startswith("(pool, against, *, n=13, min_matches=1, ")
    assert "keep: \"first\"|\"longest\" | KeepByScore (default \"first\")" in client.dedup.__doc__
    assert "dedup" in dir(client)
    quality = client.quality(pool, presets=["c4"], name="q")
    decon = client.decontaminate(pool, [target], n=8)
    dedup = client.dedup(pool, method="exact")
    assert (quality.kind, quality.name, quality.spec["presets"]) == ("quality", "q", ["c4"])
    assert decon.spec["against"] == [target.id] and dedup.spec["method"] == "exact"
    assert quality.wait().summary["rejected_by_preset"]["c4"] >= 0
    assert decon.wait().summary["contaminated"] == 0 and dedup.wait().summary["clusters"] >= 0
    with pytest.raises(InvalidArgument, match=r"decontaminate\(\) takes 2 positional arguments \(pool, against\), got 3"):
        client.decontaminate(pool, [target], 13)
    with pytest.raises(InvalidArgument, match="got 'pool' twice"):
        client.quality(pool, pool=pool)
    with pytest.raises(AttributeError, match="did you mean 'dedup'"):
        client.dedpu(pool)
    assert not hasattr(client, "no_such_kind") and not hasattr(Client("http://127.0.0.1:9", retries=0), "dedup")


def test_restrict_takes_manifests_and_the_jobs_that_wrote_them_in_every_kind_method(client, pool, target):
    """restrict= accepts manifest ids, Manifest records and Job records (the service reads a job as
    the manifest it wrote), in generated kind methods, their select sugar, exports and rejections;
    a job that has not finished yet is refused, saying so."""
    import inspect
    dedup = client.dedup(pool, method="exact").wait()
    half = client.random(pool, fraction=0.5, seed=7).wait()    # any selection restricts a pool too
    assert str(inspect.signature(client.dsir)).startswith("(pool, target, *, fraction=None, count=None, tau=None, restrict=None, select=None, ")
    job = client.dsir(pool, target, count=20, restrict=[dedup, half.manifest()])
    given = lambda select: {k: v for k, v in select.items() if v is not None}   # noqa: E731
    assert job.spec["restrict"] == [dedup.manifest_id, half.manifest_id] and given(job.spec["select"]) == {"count": 20}
    assert job.resolved == [{"field": "spec.restrict.0", "given": dedup.id, "id": dedup.manifest_id}]
    job = job.wait()
    survivors = client.query("SELECT count(*) AS n FROM d JOIN q USING (doc_id) WHERE d.selected AND q.selected",
                             {"d": dedup, "q": half})["n"][0].as_py()
    assert job.manifest().built_on == [dedup.manifest_id, half.manifest_id]
    assert job.summary["num_selected"] == 20 and job.summary["excluded_total"] == 300 - survivors
    rejections = client.manifests.rejections(job)
    assert [f["manifest_id"] for f in rejections.filters] == [dedup.manifest_id, half.manifest_id]
    assert (rejections.pool, rejections.survivors, rejections.selected) == (300, survivors, 20)
    assert job.manifest().rejections(restrict=[half]).filters[0]["rejected"] == 150
    rand = client.random(pool, tau=10, restrict=[dedup.manifest_id])
    assert given(rand.spec["select"]) == {"tau": 10} and rand.spec["restrict"] == [dedup.manifest_id]
    export = job.manifest().export(selected_only=False, restrict=[half]).wait()
    assert export.summary["built_on"] == [half.manifest_id]
    assert export.summary["num_docs"] == 150
    with pytest.raises(InvalidArgument, match="give select or count, not both"):
        client.random(pool, select={"count": 3}, count=3)
    busy = client.train_model(pool, **TINY)
    try:
        with pytest.raises(ThresherError) as e:
            client.random(pool, count=5, restrict=[busy])
        assert e.value.status == 409 and e.value.code == "job_not_finished"
        assert e.value.details["field"] == "spec.restrict.0" and "still" in e.value.message
    finally:
        busy.cancel()
