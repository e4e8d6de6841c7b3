"""Building blocks of job specs, shared by every job kind.

Specs are pydantic models: the service validates requests with them (a bad field answers 422 with
its path) and the engine re-validates the stored spec before running. Fields that name another
resource are annotated with `Ref`, so the service can check they exist for the caller (404).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Iterator, Literal, Protocol, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from storage.errors import DomainError


@dataclass(frozen=True)
class Ref:
    table: str  # catalog table the id must exist in: corpora, models, manifests


CorpusId = Annotated[str, Ref("corpora"), Field(min_length=1, description="a corpus id (cor_…)")]
ModelId = Annotated[str, Ref("models"), Field(min_length=1, description="a model id (mdl_…)")]
ManifestId = Annotated[str, Ref("manifests"), Field(min_length=1, description="a manifest id (man_…)")]


# Random seeds: numpy's generators take non-negative integers.
Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="random seed (a non-negative integer)")]
MAX_COUNT = 10**12  # the most documents a `count` may ask for
MAX_STR = 4096      # the longest string any spec field accepts (ids, field names, URIs)
# A number of documents (a size to project to, the documents available): at most MAX_COUNT, so every
# sum and product of them stays an exact int64 and a finite float.
Docs = Annotated[int, Field(ge=1, le=MAX_COUNT, description=f"documents (1 to {MAX_COUNT:.0e})")]


@dataclass(frozen=True)
class SpecLimits:
    """Bounds of spec fields that depend on the server (its settings), checked when a job is
    submitted (422, nothing queued) and again before it runs (the settings may have changed)."""
    max_projection_mixtures: int = 256
    max_train_tokens: int = 1_000_000_000
    max_model_params: int = 200_000_000


class LimitExceeded(DomainError):
    """A spec asks for more than a server setting allows (HTTP 422)."""

    def __init__(self, field: str, message: str, limit: int | float, setting: str | None = None):
        where = f" ({setting})" if setting else ""
        super().__init__("limit_exceeded", f"{field}: {message}; the limit is {limit:,}{where}",
                         {"field": field, "limit": limit, **({"setting": setting} if setting else {})})


class KnownFields(BaseModel):
    """A request object whose keys must all be fields: the first unknown key is the one error
    reported for the object ("unknown_field", with the closest field as a suggestion), so that a
    misspelt `selection` headlines as itself, not as the `select` it leaves missing."""
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                    raise PydanticCustomError(
                        "unknown_field", "unknown field '{field}'{hint}",
                        {"field": str(key), "hint": f"; did you mean {close[0]!r}?" if close else "",
                         "suggestion": close[0] if close else None, "allowed": known})
        return data


class StrictModel(KnownFields):
    """Specs are validated strictly: unknown fields, "0.1" or true for a number, NaN/Infinity, and
    strings longer than MAX_STR are refused (422 naming the field), never coerced. JSON integers
    are still accepted for float fields."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, str_max_length=MAX_STR)


def exactly_one(model: BaseModel, *names: str) -> BaseModel:
    """The rule of alternatives like {"model": id} | {"train": {…}}: exactly one field is given."""
    if sum(getattr(model, n) is not None for n in names) != 1:
        raise ValueError(f"give exactly one of {', '.join(names[:-1])} or {names[-1]}")
    return model


class Select(StrictModel):
    """How many documents to keep: exactly one of fraction, count or tau (keep 1/tau of the pool)."""
    fraction: float | None = Field(None, gt=0, le=1)
    count: int | None = Field(None, ge=1, le=MAX_COUNT)
    tau: float | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        return exactly_one(self, "fraction", "count", "tau")

    def as_dict(self) -> dict:
        return self.model_dump(exclude_none=True)


SelectMode = Literal["global", "per_shard"]


MAX_RESTRICT = 16  # manifests one pool may be restricted by


def distinct(what: str):
    """A validator refusing a list that holds an item twice: "<what> 'x' twice"."""
    def check(items: list[str]) -> list[str]:
        twice = next((i for n, i in enumerate(items) if i in items[:n]), None)
        if twice is not None:
            raise ValueError(f"{what} {twice!r} twice")
        return items
    return check


_distinct = distinct("restrict names manifest")


class Restricted(StrictModel):
    """A pool restricted by earlier manifests over the same corpus (dedup, decontaminate, quality,
    or any selection): the documents one of them does not select are left out, never scored, and
    recorded with `excluded_by` (workers/jobs/restrict.py). `pool_field` names the field whose
    corpus (or a manifest's corpus) the restricting manifests must be over."""
    pool_field: ClassVar[str] = "pool"
    restrict: Annotated[list[ManifestId], AfterValidator(_distinct)] = Field(
        default_factory=list, max_length=MAX_RESTRICT,
        description="manifests over the same corpus whose unselected documents are left out of the pool")


class TargetedSelection(Restricted):
    """A selection from `pool` toward `target` (DSIR, CoLoR-Filter)."""
    pool: CorpusId
    target: CorpusId
    select: Select
    mode: SelectMode = "global"


def ref_of(info) -> Ref | None:
    """The Ref of a field, also when it hides in an Optional (`ModelId | None`)."""
    found = next((m for m in info.metadata if isinstance(m, Ref)), None)
    if found:
        return found
    for arg in get_args(info.annotation):
        if get_origin(arg) is Annotated:
            found = next((m for m in get_args(arg)[1:] if isinstance(m, Ref)), None)
            if found:
                return found
    return None


def walk(value: Any, path: tuple = (), info=None) -> Iterator[tuple[Any, tuple, Any]]:
    """Yield (value, path, its field's info or None) for a spec and everything in it, depth first."""
    yield value, path, info
    if isinstance(value, BaseModel):
        for name, field_info in type(value).model_fields.items():
            yield from walk(getattr(value, name), (*path, name), field_info)
    elif isinstance(value, (list, tuple, dict)):
        for k, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            yield from walk(v, (*path, k))


def iter_refs(value: Any, path: tuple = ()) -> Iterator[tuple[str, str, tuple]]:
    """Yield (table, id, path) for every Ref-annotated field of a spec, nested models included."""
    for v, at, info in walk(value, path):
        ref = ref_of(info) if info is not None else None
        if ref and isinstance(v, str):
            yield ref.table, v, at
        elif ref and isinstance(v, list):   # a list of ids (`against`, `restrict`): each item
            yield from ((ref.table, item, (*at, k)) for k, item in enumerate(v) if isinstance(item, str))


def _each_model(spec: BaseModel, method: str, arg: Any) -> None:
    """Call `method(arg, field)` on every model in `spec` that defines it, `field` being its dotted
    path from `spec`."""
    for v, at, _ in walk(spec, ("spec",)):
        if isinstance(v, BaseModel) and hasattr(v, method):
            getattr(v, method)(arg, ".".join(map(str, at)))


def check_limits(spec: BaseModel, limits: SpecLimits) -> None:
    """Raise LimitExceeded for the first part of `spec` over a server limit (models define
    `check_limits(limits, field)`)."""
    _each_model(spec, "check_limits", limits)


class Records(Protocol):
    """What a spec's submit-time checks may ask of the service, for the caller's tenant."""

    def record(self, table: str, id_: str) -> dict:
        """The record (its existence is checked before, by the Refs)."""

    def manifest_corpus(self, manifest_id: str) -> str | None:
        """The corpus a selection manifest's rows come from (None without rows)."""

    def query(self, sql: str, tables: dict[str, str]) -> None:
        """Run a SELECT over manifests (name -> manifest id) in the query sandbox; raises its QueryError."""


def check_records(spec: BaseModel, records: Records) -> None:
    """Raise DomainError for the first part of `spec` that does not fit what it names (a source
    value its corpus lacks, a predicate the sandbox refuses): models define
    `check_records(records, field)`. Run when a job is submitted (4xx, nothing queued)."""
    _each_model(spec, "check_records", records)


def check_source_value(corpus: dict, value: str, field: str) -> None:
    """`value` must be a `source` value of the corpus (a ready corpus's counts say which)."""
    known = corpus.get("sources") or {}
    if corpus.get("state") != "ready" or value in known:
        return  # a corpus not ready yet is counted when it is; the job checks again
    close = difflib.get_close_matches(value, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DomainError("validation_error", f"{field}: corpus {corpus['id']} has no document with source "
                      f"{value!r}{hint}; its sources are {', '.join(map(repr, sorted(known))) or 'none'}",
                      {"field": field, "value": value, "sources": sorted(known)})
