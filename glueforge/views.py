"""Views: the part of the configuration one cached step reads, handed to it whole and hashed whole.

A step's build receives only its view (``glueforge.stages``), and its action key hashes that
view's :func:`payload`, so what a step can read and what its key covers are one object, derived
rather than listed twice. Two kinds of view:

- a frozen dataclass that a stage assembles from the job (only the fields it needs; a field it
  does not need is left out of the dataclass, so the build cannot reach it);
- :func:`restricted`, a copy of a pydantic spec (a target) on which only the declared fields can
  be read: reading another raises :class:`UndeclaredRead` naming the field, so a runtime module
  that starts reading a new target field fails its tests until the step declares it (and so
  keys on it), instead of silently reusing a result built with another value.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable

from pydantic import BaseModel


class UndeclaredRead(LookupError):
    """A build read a configuration field its view does not declare (a programming error, not a user's)."""


@functools.cache
def _restricted_class(cls: type[BaseModel], declared: frozenset[str]) -> type[BaseModel]:
    fields = frozenset(cls.model_fields)

    def __getattribute__(self, name: str) -> Any:  # noqa: N807 - the attribute hook
        if name in fields and name not in declared:
            raise UndeclaredRead(f"{cls.__name__}.{name} is read, but the step's view declares only "
                                 f"{sorted(declared)}: declare it, so that the step's action key covers it")
        return object.__getattribute__(self, name)

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__declared__": declared,
                                      "__module__": cls.__module__})


def restricted(spec: BaseModel, fields: Iterable[str]) -> BaseModel:
    """A copy of ``spec`` on which only ``fields`` can be read (class attributes and methods stay)."""
    spec = unrestricted(spec)
    declared = frozenset(fields)
    unknown = declared - set(type(spec).model_fields)
    if unknown:
        raise ValueError(f"{type(spec).__name__} has no fields {sorted(unknown)}")
    view = spec.model_copy()
    object.__setattr__(view, "__class__", _restricted_class(type(spec), declared))
    return view


def unrestricted(spec: BaseModel) -> BaseModel:
    """The full spec behind a restricted view (or the spec itself)."""
    cls = type(spec)
    if "__declared__" not in cls.__dict__:
        return spec
    full = object.__new__(cls.__mro__[1])
    for slot in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
        object.__setattr__(full, slot, object.__getattribute__(spec, slot))
    return full


def declared(spec: BaseModel) -> frozenset[str] | None:
    """The fields a restricted view declares; None for a plain spec."""
    return type(spec).__dict__.get("__declared__")


def payload(value: Any) -> Any:
    """The JSON value of a view: dataclasses field by field, pydantic specs by their declared fields."""
    if isinstance(value, BaseModel):
        fields = declared(value)
        return unrestricted(value).model_dump(mode="json", include=set(fields) if fields is not None else None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: payload(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): payload(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [payload(v) for v in value]
    return value
