"""Building blocks of job specs, shared by every job kind.

Specs are pydantic models: the service validates requests with them (a bad field answers 422 with
its path) and the engine re-validates the stored spec before running. Fields that name another
resource are annotated with `Ref`, so the service can check they exist for the caller (404).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


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


class TargetedSelection(StrictModel):
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


def iter_refs(value: Any, path: tuple = ()) -> Iterator[tuple[str, str, tuple]]:
    """Yield (table, id, path) for every Ref-annotated field of a spec, nested models included."""
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            v = getattr(value, name)
            ref = ref_of(info)
            if ref and isinstance(v, str):
                yield ref.table, v, (*path, name)
            else:
                yield from iter_refs(v, (*path, name))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from iter_refs(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_refs(v, (*path, k))
