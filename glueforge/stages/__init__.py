"""Stages: one object each, owning what it reads, how it builds and its code identity.

A stage runs as steps: one per model and target, or one per graph (``Stage.per_graph``: export,
simplify), so that targets whose graph views are equal share the graph. A step's action key
(``glueforge.pipeline``) hashes

- its code: the project-local import closure of :meth:`Stage.modules` (``glueforge.identity``),
  which includes the family or runtime modules it calls for this job: editing any module a
  step uses reruns it, and editing one it does not use reruns nothing;
- the digests of the results of the stages it :meth:`needs`;
- :meth:`Stage.view`: the part of the configuration it reads (``glueforge.views``). The build
  receives the view and nothing else of the configuration, so the key covers what it reads
  by construction; :meth:`Stage.tools`: the versions of the tools that shape its bytes.

This module holds only the base: it must not import the stage modules, or every stage's
code identity would include every other stage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Mapping, Optional, Protocol

from glueforge import registry
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

    def git_commit(self) -> str | None: ...

    def fetch(self, weight: str) -> Path: ...

    def weight_digest(self, name: str) -> str: ...

    def version(self, model: str) -> str: ...

    def provenance(self, job: Job, with_commit: bool) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Label:
    """Who a step builds for, for log lines and messages only: never part of a key (a step's result is shared by
    every model and target whose view is equal)."""

    model: str
    target: str
    graph: str | None = None

    def __str__(self) -> str:
        return f"{self.model}/{self.graph}" if self.graph else f"{self.model} for {self.target}"


@dataclass(frozen=True)
class WeightRef:
    """A weight as a step reads it: its name (to fetch it) and the digest it is held to (what the key covers)."""

    name: str
    sha256: str


class Stage:
    """One stage of the graph. Its steps are one per model and target, or one per graph (``per_graph``).

    A step's action key (``glueforge.pipeline``) covers its code (:meth:`modules`), the digests of the results
    it :meth:`needs`, its :meth:`view` (the configuration it reads, which is all :meth:`build` receives of it)
    and its :meth:`tools`.
    """

    name: ClassVar[str]
    per_graph: ClassVar[bool] = False  # one step per graph of the model, each with its own key
    task: ClassVar[Optional[str]] = None  # the doit stage whose task builds this step; None: its own

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        """The stages whose results this one reads (a per-graph stage read by a per-graph stage: the same graph's)."""
        return ()

    def graphs(self, job: Job) -> list[str]:
        """The graphs a per-graph stage has a step for."""
        return job.graphs

    def modules(self, job: Job, graph: str | None) -> list[str]:
        """The modules whose import closure is this step's code."""
        return [type(self).__module__]

    def view(self, services: Services, job: Job, graph: str | None) -> Any:
        """The configuration this step reads: all its build receives of it, and hashed whole into its key."""
        return None

    def tools(self, job: Job) -> dict[str, Any]:
        """The versions of the tools that shape this step's bytes."""
        return {}

    def build(self, services: Services, view: Any, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        """Write the step's files into ``out``; return its metadata."""
        raise NotImplementedError


def weights_of(services: Services, job: Job, roles: tuple[str, ...] = ("extractor", "matcher")) -> dict[str, WeightRef]:
    """The weights of the parts in ``roles`` as a view holds them."""
    return {role: WeightRef(name, services.weight_digest(name)) for role, name in job.weight_names().items() if role in roles}


def tool_versions(*packages: str) -> dict[str, str]:
    from glueforge.machine import tool_versions as versions

    return versions(*packages)
