"""Response and request models of the HTTP API (they are the OpenAPI document's schemas)."""
from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, Union

from fastapi import Body
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from workers.registry import KINDS
from workers.specs import MAX_RESTRICT, MAX_STR, KnownFields

MAX_NAME = 200  # the longest name of a job, corpus or model


def printable_name(name: str) -> str:
    """A name becomes a download's file name and a line of logs and tables: no control characters
    (CR, LF, NUL, tab, …) and no line or paragraph separators."""
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad):04X})")
    return name


Name = Annotated[str, Field(max_length=MAX_NAME), AfterValidator(printable_name)]


class Corpus(BaseModel):
    id: str
    name: str
    state: Literal["ingesting", "ready", "failed"]
    num_docs: int | None = None
    num_bytes: int | None = None
    num_shards: int | None = None
    num_empty: int | None = Field(None, description="documents with no text (stored, never scored)")
    empty_doc_ids: list[str] = Field(default_factory=list, description="the first empty documents' ids")
    sources: dict[str, int] = Field(default_factory=dict)
    ids_generated: bool | None = Field(None, description="true when the documents had no id field and "
                                       "Thresher numbered them from 0000000000 in file order")
    fields: dict[str, str] = Field(default_factory=dict, description="the input's fields beyond id, text "
                                   "and source, stored as columns: name -> Arrow type")
    json_fields: list[str] = Field(default_factory=list, description="fields whose values disagreed in "
                                   "type across documents: stored as each value's JSON text")
    created_at: str
    job_id: str | None = None
    error: dict | None = None


class StageRun(BaseModel):
    stage: str
    started_at: str | None = None
    done: float = 0
    total: float = 0
    unit: str | None = None
    seconds: float | None = Field(None, description="how long the stage ran (so far, for the current one)")
    up_to: float | None = Field(None, description="a ceiling: the stage may stop before it (a training with early "
                                "stopping); `total` is the ceiling while it runs and what it used once done")


class PlanStage(BaseModel):
    stage: str
    state: Literal["done", "running", "pending"]
    done: float = 0
    total: float | None = Field(None, description="unknown (null) for a stage not yet begun")
    unit: str | None = None
    up_to: float | None = Field(None, description="the ceiling of a stage that may stop early")
    expected_total: float | None = Field(None, description="where a stage that may stop early is expected to "
                                         "stop: where earlier runs of it stopped")
    eta_s: float | None = Field(None, description="seconds left in this stage; null: unknown")
    basis: str | None = Field(None, description="where eta_s comes from, or why it is unknown")


class Progress(BaseModel):
    stage: str | None = None
    done: float = 0
    total: float = 0
    unit: str | None = None
    rate_per_s: float | None = None
    eta_s: float | None = Field(None, description="seconds left in the whole job: the running stage's from its "
                                "measured rate, plus the stages to come (see `plan`); null when any is unknown")
    detail: dict[str, Any] | None = Field(None, description="more counts of the stage, e.g. files_done/files_total")
    stages: list[StageRun] = Field(default_factory=list, description="the stages this run of the job went "
                                   "through, in order, the last one `stage`")
    plan: list[PlanStage] = Field(default_factory=list, description="the whole job: the stages done, the "
                                  "running one and those to come, each with its ETA")
    waiting: str | None = Field(None, description="why the job does not run yet: every job slot of its lane is "
                                "taken (queued), or the CPUs its tasks need are held by other jobs (running)")
    input_docs: int | None = Field(None, description="documents in the corpora and manifests the spec names: "
                                   "what the estimates of stages to come scale by")


class JobError(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    manifest_id: str | None = None
    model_id: str | None = None
    corpus_id: str | None = None
    curriculum_id: str | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, dict[str, int]] | None = Field(None, description="finished tasks per stage and Ray node id: "
                                                    "where the work ran")


class Resolved(BaseModel):
    field: str
    given: str
    id: str


class Job(BaseModel):
    id: str
    kind: str
    name: str | None = None
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress = Field(default_factory=Progress)
    error: JobError | None = None
    result: JobResult | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    resolved: list[Resolved] | None = Field(None, description="only in the answer to a submission: the "
                                            "spec fields given a name (a manifest: its job's id) instead of an id, "
                                            "and the id each was resolved to")


class Column(BaseModel):
    name: str
    type: str


class Manifest(BaseModel):
    id: str
    job_id: str | None = Field(description="the job that wrote it")
    kind: str = Field(description="that job's kind (random, dsir, score, color_filter, reweight, projection)")
    num_rows: int = Field(description="rows: one per document of the pool (or per prediction)")
    num_selected: int = Field(description="rows with selected = true")
    columns: list[Column]
    num_shards: int = Field(description="Parquet parts, one per corpus shard")
    built_on: list[str] = Field(default_factory=list, description=(
        "the manifests whose unselected documents were left out of its pool (`restrict`)"))
    created_at: str


class ManifestShard(BaseModel):
    shard: int
    num_rows: int
    num_selected: int
    url: str


class Model(BaseModel):
    id: str
    name: str | None
    source: str = Field(description="trained (by a train_model job) or registered (a local checkpoint)")
    job_id: str | None = None
    created_at: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Page(BaseModel):
    next_cursor: str | None = None


class CorpusList(Page):
    items: list[Corpus]


class JobList(Page):
    items: list[Job]


class ManifestList(Page):
    items: list[Manifest]


class ModelList(Page):
    items: list[Model]


class ShardList(BaseModel):
    items: list[ManifestShard]


Split = Literal["file", "line", "paragraph"]


class RegisterCorpus(KnownFields):
    """Register data the server can read (a file under an allowed root, or an object-store URI)."""
    model_config = ConfigDict(str_max_length=MAX_STR)
    name: Name = Field(min_length=1)
    uri: str = Field(min_length=1)
    format: Literal["jsonl", "parquet", "csv", "text"] | None = None
    text_field: str = "text"
    id_field: str = "id"
    source_field: str = "source"
    split: Split = Field("file", description="plain text: a document per file, per non-empty line, or "
                         "per blank-line-separated paragraph")
    source_from: Literal["dir"] | None = Field(None, description="plain text: the source is the file's "
                                               "first directory under the registered one")

    @field_validator("uri")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        return no_nul(v)

    @field_validator("id_field")
    @classmethod
    def _distinct_fields(cls, v: str, info: ValidationInfo) -> str:
        return distinct_fields(info.data.get("text_field"), v)


def no_nul(path: str) -> str:
    """Paths go to the operating system: a NUL byte in one is refused (422), not a 500."""
    if "\x00" in path:
        raise ValueError("must not contain a NUL byte")
    return path


def distinct_fields(text_field: str | None, id_field: str) -> str:
    """A document's id and text come from different fields; returns `id_field`."""
    if text_field == id_field:
        raise ValueError(f"id_field must differ from text_field (both are {id_field!r})")
    return id_field


class QueryRequest(KnownFields):
    sql: str = Field(min_length=1, max_length=100_000)
    tables: dict[str, str] = Field(description="table name in the SQL -> manifest id, or corpus id "
                                   "(its documents: id, text, source and the extra fields)")
    limit: int = Field(1000, ge=1, le=100_000)


class QueryResult(BaseModel):
    columns: list[Column]
    rows: list[list[Any]]
    truncated: bool


class ExportRequest(KnownFields):
    selected_only: bool = True
    name: Name | None = None
    restrict: list[str] = Field(default_factory=list, max_length=MAX_RESTRICT, description=(
        "manifests over the same corpus whose unselected documents are left out of the export"))


def _job_request_models():
    models = []
    for kind in KINDS.values():
        if kind.internal:
            continue
        models.append(create_model(
            f"{kind.name.title().replace('_', '')}JobRequest",
            __doc__=kind.description, __base__=KnownFields,
            kind=(Literal[kind.name], ...), name=(Name | None, None),
            spec=(kind.spec, ...)))
    return models


JOB_REQUESTS = _job_request_models()
JobRequest = Annotated[Union[tuple(JOB_REQUESTS)], Body(discriminator="kind")]
PUBLIC_KINDS = {k.name for k in KINDS.values() if not k.internal}
