"""Stages: one object each, owning what it reads, how it builds and its code identity.

A stage's action key (``glueforge.pipeline``) hashes

- its code: the project-local import closure of :meth:`Stage.modules` (``glueforge.identity``),
  which includes the family or runtime modules it calls for this job: editing any module a
  stage uses reruns it, and editing one it does not use reruns nothing;
- the digests of the results of the stages it :meth:`needs`;
- :meth:`Stage.settings`: the part of the configuration it reads and the versions of the
  tools that shape its bytes.

This module holds only the base: it must not import the stage modules, or every stage's
code identity would include every other stage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Mapping, Protocol

from glueforge import registry
from glueforge.cache import Result
from glueforge.config import Config, ExportSettings
from glueforge.schema import TargetSpec


@dataclass(frozen=True)
class Job:
    """One model for one target."""

    config: Config
    model: str
    target: str

    @functools.cached_property
    def spec(self) -> Any:
        return self.config.model(self.model)

    @functools.cached_property
    def target_spec(self) -> TargetSpec:
        return self.config.target(self.target)

    @functools.cached_property
    def settings(self) -> ExportSettings:
        return self.config.export_settings(self.model, self.target)

    @property
    def runtime(self) -> ModuleType:
        return registry.runtime(self.target_spec.runtime)

    @property
    def parts(self) -> dict[str, Any]:
        """The model's extractor and, where it has one, matcher spec."""
        return {role: part for role in ("extractor", "matcher") if (part := getattr(self.spec, role)) is not None}

    @property
    def families(self) -> list[ModuleType]:
        return [registry.family(part.family) for part in self.parts.values()]

    @property
    def graphs(self) -> list[str]:
        return self.spec.graphs

    def weight_names(self) -> dict[str, str]:
        """Role -> weight name, for the parts that have learned weights (a host extractor has none)."""
        return {role: part.weights for role, part in self.parts.items() if part.weights is not None}


class Services(Protocol):
    """What the pipeline lends a stage while it builds."""

    root: Path
    artifacts: Path
    unvalidated: bool

    def fetch(self, weight: str) -> Path: ...

    def weight_digest(self, name: str) -> str: ...

    def version(self, model: str) -> str: ...

    def provenance(self, job: Job, with_commit: bool) -> dict[str, Any]: ...


class Stage:
    name: ClassVar[str]

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        """The stages whose results this one reads."""
        return ()

    def modules(self, job: Job) -> list[str]:
        """The modules whose import closure is this stage's code."""
        return [type(self).__module__]

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        """The configuration this stage reads and the versions of the tools that shape its bytes."""
        return {}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        """Write the stage's files into ``out``; return its metadata."""
        raise NotImplementedError


def tool_versions(*packages: str) -> dict[str, str]:
    from glueforge.machine import tool_versions as versions

    return versions(*packages)
