"""Curriculum runs (SeTa / InfoBatch) driven by a training loop over HTTP.

A run is a scheduler from scoring/schedulers.py plus the corpus's document ids (index i is the i-th
document in stored order). Its whole state — scheduler config, scores, epoch, plans made — is one
Parquet file written atomically after every change (scores as a column, the rest as JSON in the
file's metadata), so a restarted service continues exactly where it stopped. Epoch plans are kept
too, so an epoch's sample list can be fetched again.

The service calls this in-process: a training loop waits on each epoch's plan, and planning is a
sort and a 1-D k-means over the scores, far cheaper than a round trip through a Ray task. A body of
losses, though, is user bytes: the service spools it into storage (bounded by what the run can take,
`losses_body_limit`) and a Ray worker parses it (`read_losses`), its Parquet decoded in bounded
batches; the service gets back only the ids and losses.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel, Field, ValidationError

from scoring.schedulers import InfoBatchScheduler, SeTaScheduler, scheduler_from_state
from storage import layout
from storage.errors import DomainError
from storage.fs import Store
from storage.ingest.parquet_reader import bounded_batches
from workers.kind import REQUEST_TASK
from workers.runtime import ray_get
from workers.specs import KnownFields

SCHEDULERS = {"seta": SeTaScheduler, "infobatch": InfoBatchScheduler}


class CurriculumError(DomainError):
    """A request a run cannot take in its current state (the code says why)."""


class LossItem(BaseModel):
    doc_id: str
    loss: float


class LossPost(KnownFields):  # an unknown key is named, not ignored
    epoch: int = Field(ge=0)
    losses: list[LossItem] = Field(min_length=1)


LOSS_BODY_OVERHEAD = 64 << 10   # bytes of a loss body besides its items
LOSS_ITEM_OVERHEAD = 64         # bytes of one JSON item besides its id (twice, for escapes)


def losses_body_limit(doc_ids: pa.Array, cap: int) -> int:
    """The largest loss body a run of `doc_ids` can need: every document once, in JSON."""
    longest = pc.max(pc.binary_length(doc_ids)).as_py() or 0
    return min(cap, LOSS_BODY_OVERHEAD + len(doc_ids) * (2 * longest + LOSS_ITEM_OVERHEAD))


@ray.remote
def read_losses(store_root: str, parts: tuple, parquet: bool, max_items: int, longest_id: int,
                max_decompressed_bytes: int) -> tuple[int | None, pa.Array, np.ndarray]:
    """(epoch of a JSON body or None, doc ids, losses) of a spooled loss body, parsed here on a
    worker: at most `max_items` losses, no id longer than `longest_id` (it cannot be the run's), a
    Parquet body decoded in bounded batches up to `max_decompressed_bytes`."""
    store = Store(store_root)
    if not parquet:
        try:
            post = LossPost.model_validate_json(store.read_bytes(*parts))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise CurriculumError("validation_error", f"{field}: {err['msg']}", {"field": field}) from None
        ids = pa.array([x.doc_id for x in post.losses], pa.string())
        return post.epoch, ids, np.array([x.loss for x in post.losses], dtype=np.float64)
    try:
        pf = pq.ParquetFile(store.fs.open_input_file(store.path(*parts)))
        if pf.metadata.num_rows > max_items:
            raise CurriculumError("payload_too_large", f"{pf.metadata.num_rows} losses, more than the run's "
                                  f"{max_items} documents", {"limit": max_items})
        ids, losses = [], []
        for batch in bounded_batches(pf, lambda rd: pq.ParquetFile(store.fs.open_input_file(store.path(*parts)),
                                                                   read_dictionary=rd),
                                     ["doc_id", "loss"], 8 << 20, max_decompressed_bytes):
            batch_ids = batch.column("doc_id").cast(pa.string())
            if (pc.max(pc.binary_length(batch_ids)).as_py() or 0) > longest_id:
                raise CurriculumError("unknown_doc_id", "a doc_id longer than any document id of this run",
                                      {"index": sum(map(len, ids)) + pc.index(
                                          pc.greater(pc.binary_length(batch_ids), longest_id), True).as_py()})
            ids.append(batch_ids)
            losses.append(batch.column("loss").to_numpy(zero_copy_only=False).astype(np.float64))
    except (pa.ArrowException, KeyError, ValueError) as e:
        raise CurriculumError("bad_parquet", f"expected a Parquet table with doc_id and loss columns: {e}") from None
    return None, pa.concat_arrays(ids) if ids else pa.array([], pa.string()), \
        np.concatenate(losses) if losses else np.array([], np.float64)


def parse_losses(store: Store, parts: tuple, parquet: bool, doc_ids: pa.Array,
                 max_decompressed_bytes: int) -> tuple[int | None, pa.Array, np.ndarray]:
    """read_losses on a Ray worker (the service never decodes the body); its result."""
    longest = pc.max(pc.binary_length(doc_ids)).as_py() or 0
    ref = read_losses.options(**REQUEST_TASK.ray_options(), max_retries=0).remote(
        store.root, parts, parquet, len(doc_ids), longest, max_decompressed_bytes)
    try:
        return ray_get(ref, "parsing the losses")
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError) as e:
        raise CurriculumError("bad_body", "the parser crashed on this body; nothing was recorded",
                              {"reason": type(e).__name__}) from None


def create_run(store: Store, run_id: str, method: str, doc_ids: pa.Array, params: dict,
               initial_losses: np.ndarray | None = None) -> dict:
    sched = SCHEDULERS[method](num_samples=len(doc_ids), **params)
    if initial_losses is not None:
        known = np.flatnonzero(np.isfinite(initial_losses))
        sched.update(known, initial_losses[known])
    store.write_parquet(pa.table({"doc_id": doc_ids}), *layout.curriculum_docs(run_id))
    _save(store, run_id, sched, epoch=0, posted=0)
    return describe(store, run_id)


def _save(store: Store, run_id: str, sched, epoch: int, posted: int) -> None:
    state = sched.state_dict()
    scores = state.pop("scores")
    meta = {"state": state, "epoch": epoch, "losses_posted": posted}
    table = pa.table({"score": scores}).replace_schema_metadata({"thresher": json.dumps(meta)})
    store.write_parquet(table, *layout.curriculum_state(run_id))


def _load(store: Store, run_id: str):
    table = store.read_parquet(*layout.curriculum_state(run_id))
    meta = json.loads(table.schema.metadata[b"thresher"])
    state = {**meta["state"], "scores": table["score"].to_numpy()}
    return scheduler_from_state(state), meta["epoch"], meta["losses_posted"]


def planned_counts(store: Store, run_id: str) -> tuple[int, dict[int, int]]:
    """(samples in the run, {epoch: samples in its plan}) for the epochs planned so far."""
    sched, _, _ = _load(store, run_id)
    return sched.num_samples, dict(sched.planned_counts)


def describe(store: Store, run_id: str) -> dict:
    sched, epoch, posted = _load(store, run_id)
    return {"method": sched.kind, "epoch": epoch, "epochs": sched.epochs, "num_samples": sched.num_samples,
            "saved_fraction": sched.saved_fraction, "losses_posted": posted, "cost": sched.saved_cost(),
            "params": {k: v for k, v in sched.config().items() if k != "num_samples"},
            "finished": epoch >= sched.epochs - 1 and posted > 0}


class CurriculumRuns:
    """Serialises access per run (the service is one process; runs are independent)."""

    def __init__(self, store: Store):
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._ids: dict[str, pa.Array] = {}

    def _lock(self, run_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def doc_ids(self, run_id: str) -> pa.Array:
        if run_id not in self._ids:
            self._ids[run_id] = self.store.read_parquet(*layout.curriculum_docs(run_id))["doc_id"].combine_chunks()
        return self._ids[run_id]

    def plan(self, run_id: str, epoch: int) -> tuple[pa.Array, np.ndarray | None]:
        """The samples of `epoch` (doc ids, and weights for InfoBatch).

        Epochs before the current one are served from their stored plans. Asking for the epoch
        after the current one advances the run — allowed once losses of the current epoch arrived.
        """
        with self._lock(run_id):
            sched, current, posted = _load(self.store, run_id)
            if not 0 <= epoch < sched.epochs:
                raise CurriculumError("not_found", f"epoch {epoch} is outside 0…{sched.epochs - 1}",
                                      {"epoch": epoch})
            if epoch > current + 1:
                raise CurriculumError("epoch_not_ready", f"epoch {epoch} is not planned yet: the run is "
                                      f"at epoch {current}", {"epoch": epoch, "current_epoch": current})
            advance = epoch == current + 1
            if advance and not posted:
                raise CurriculumError("losses_missing", f"post the losses of epoch {current} before "
                                      f"asking for epoch {epoch}", {"current_epoch": current})
            plan_file = layout.curriculum_epoch(run_id, epoch)
            planned = self.store.exists(*plan_file)
            if not planned:
                indices, weights = sched.epoch_plan(epoch)
                cols = {"index": pa.array(indices)}
                if weights is not None:
                    cols["weight"] = pa.array(weights)
                self.store.write_parquet(pa.table(cols), *plan_file)
            # The plan is written before the state that points past it: a crash in between
            # leaves a plan that the next request finds and adopts.
            if advance or not planned:
                _save(self.store, run_id, sched, epoch if advance else current, 0 if advance else posted)
            plan = self.store.read_parquet(*plan_file)
        ids = self.doc_ids(run_id).take(plan["index"])
        weights = plan["weight"].to_numpy() if "weight" in plan.column_names else None
        return ids, weights

    def post_losses(self, run_id: str, epoch: int, doc_ids: pa.Array, losses: np.ndarray) -> dict:
        """Record per-sample losses seen in `epoch` (the current one); all-or-nothing."""
        with self._lock(run_id):
            sched, current, posted = _load(self.store, run_id)
            if epoch != current:
                raise CurriculumError("wrong_epoch", f"losses are for epoch {epoch}, but the run is at "
                                      f"epoch {current}", {"epoch": epoch, "current_epoch": current})
            if not self.store.exists(*layout.curriculum_epoch(run_id, epoch)):
                raise CurriculumError("epoch_not_started", f"fetch the plan of epoch {epoch} first",
                                      {"epoch": epoch})
            if len(doc_ids) != len(losses):
                raise CurriculumError("validation_error", "doc_ids and losses differ in length")
            bad = np.flatnonzero(~np.isfinite(losses))
            if len(bad):
                i = int(bad[0])
                raise CurriculumError("non_finite_loss", f"loss of {doc_ids[i].as_py()!r} is {losses[i]}",
                                      {"doc_id": doc_ids[i].as_py(), "index": i})
            index = pc.index_in(doc_ids, value_set=self.doc_ids(run_id))
            unknown = np.flatnonzero(~pc.is_valid(index).to_numpy(zero_copy_only=False))
            if len(unknown):
                i = int(unknown[0])
                raise CurriculumError("unknown_doc_id", f"{doc_ids[i].as_py()!r} is not a document of "
                                      f"this run ({len(unknown)} unknown)", {"doc_id": doc_ids[i].as_py(), "index": i})
            sched.update(index.to_numpy(zero_copy_only=False), losses)
            _save(self.store, run_id, sched, current, posted + len(losses))
        return describe(self.store, run_id)
