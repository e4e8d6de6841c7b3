"""Select with CoLoR-Filter, then train on the selection — with the Python client only.

Notebook style: each block is a cell. It uploads a small generated pool (three domains) and a
target (one domain), runs a small CoLoR-Filter, streams the selected documents into a PyTorch
DataLoader with `SelectionDataset`, and takes a few training steps of a small byte-level
language model. A couple of minutes on a laptop CPU.

From the checkout's root, after `make install`:

    .venv/bin/thresher serve &                         # or any running service
    .venv/bin/python examples/select_and_train.py      # $THRESHER_URL / $THRESHER_KEY if not local
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from thresher import Client
from thresher.data import SelectionDataset

# %% Data: a pool of 400 documents from three domains; the target is astronomy.
WORDS = {"cooking": "flour butter oven bake simmer garlic recipe dough roast broth".split(),
         "finance": "market stock bond yield equity dividend credit loan capital bank".split(),
         "astronomy": "star galaxy planet orbit telescope comet eclipse quasar moon photon".split()}
COMMON = "the of and a to in is was that for it with as on be at by this".split()
rng = random.Random(0)


def document(domain: str) -> str:
    return " ".join(rng.choice(WORDS[domain] if rng.random() < 0.5 else COMMON) for _ in range(rng.randint(15, 40)))


pool_docs = ({"id": f"p{i}", "source": d, "text": document(d)}
             for i, d in enumerate(rng.choice(list(WORDS)) for _ in range(400)))     # a generator: streamed
target_docs = [{"id": f"t{i}", "text": document("astronomy")} for i in range(60)]

# %% Upload both (any iterable of dicts, a file, a DataFrame or an Arrow table).
client = Client()                                   # $THRESHER_URL, $THRESHER_KEY
pool = client.corpora.upload(pool_docs, name="example-pool")
target = client.corpora.upload(target_docs, name="example-target")
print(pool.id, pool.num_docs, pool.sources)

# %% CoLoR-Filter: keep the 10% of the pool whose loss drops most under a model tuned on the target.
# Small models and budgets so that it takes a minute or two on a CPU.
job = client.color_filter(
    pool, target, fraction=0.1,
    prior={"train": {"preset": "tiny", "tokens": 60_000, "vocab_size": 512, "batch_size": 16, "seq_len": 64}},
    conditional={"finetune": {"epochs": 2, "warmup_steps": 5, "batch_size": 8}},
).wait(progress=True)
manifest = job.manifest()
print("selected by source:", job.summary["selected_by_source"])
print(client.query("SELECT source, count(*) AS n, avg(score) AS score FROM m WHERE selected GROUP BY 1",
                   {"m": manifest}))

# %% Stream the selected documents into a DataLoader: 2 workers, a seeded shuffle per epoch.
BATCH = 8
dataset = SelectionDataset(manifest, client=client, seed=0, block_size=BATCH)   # or storage="s3://…"
loader = DataLoader(dataset, batch_size=BATCH, num_workers=2)


# %% A small byte-level language model, trained for a few steps on the selection.
class ByteLM(torch.nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(257, dim)          # 256 bytes + padding
        self.rnn = torch.nn.GRU(dim, dim, batch_first=True)
        self.head = torch.nn.Linear(dim, 257)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0])


def encode(texts: list[str], length: int = 128) -> torch.Tensor:
    out = torch.full((len(texts), length), 256, dtype=torch.long)
    for i, t in enumerate(texts):
        b = list(t.encode()[:length])
        out[i, :len(b)] = torch.tensor(b)
    return out


torch.manual_seed(0)
model = ByteLM()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
losses = []
for epoch in range(2):
    dataset.set_epoch(epoch)
    for batch in loader:
        x = encode(batch["text"])
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 257), x[:, 1:].reshape(-1), ignore_index=256)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"epoch {epoch}: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < losses[0], "the loss should fall"
