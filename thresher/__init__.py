"""Thresher's Python client: `Client(url, api_key)` and `thresher.data.SelectionDataset`.

    from thresher import Client
    client = Client("http://127.0.0.1:8321", api_key="…")
    pool = client.corpora.upload("pool.jsonl.gz", name="pool")
    job = client.dsir(pool.id, target.id, fraction=0.1).wait(progress=True)
    table = client.manifests.get(job.manifest_id).to_arrow(selected_only=True)
"""
from thresher.client import (Client, Corpus, Curriculum, EpochPlan, InvalidArgument, Job, Kind, Manifest,
                             Model, Page, Rejections, ThresherError)

__all__ = ["Client", "ThresherError", "InvalidArgument", "Corpus", "Job", "Manifest", "Model", "Curriculum",
           "EpochPlan", "Kind", "Page", "Rejections"]
