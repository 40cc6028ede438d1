"""The runtime interface: what a module of ``runtimes/`` provides.

A runtime module owns everything about one way of running graphs; core code reaches it
through ``glueforge.registry.runtime(target.runtime)`` and never names it:

- ``Target``: its target schema, a :class:`glueforge.schema.TargetSpec` subclass with
  ``runtime: Literal["<name>"]``; its class attributes say which precisions it builds, whether
  its graphs take dense match outputs and its TopK limit, and its validators refuse
  combinations it cannot build when models.yaml loads;
- ``TOOLS``: the packages whose versions shape what ``prepare`` writes (pinned ones count at
  their pin where not installed, so runners without them compute the same keys);
- ``prepare(model, graph, target) -> (model, meta)``: the graph this runtime builds from
  (fusion, FP16, lint); the fuse stage;
- ``build(graphs, out, target, context) -> meta``: the engine files in ``out``, and the
  manifest's ``runtime`` block (name, versions, devices, ``files``: graph -> file); the
  engine stage. A runtime that cannot build here raises :class:`EngineUnavailable` saying
  what is missing and where the build can run;
- ``versions() -> dict``: the installed versions that shape its engines (engine key);
- ``runner(directory, graph, name) -> polygraphy runner``: runs one graph of an engine
  directory (a cache entry or a bundle); validation, parity and later users run engines
  only through it;
- ``measured_with``: what validation of its engines actually runs, for the manifest;
- ``check_compatibility(manifest)``: refuses a bundle this machine cannot run (pull);
  standard library only, like the rest of the pull side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from glueforge import GlueforgeError


class EngineUnavailable(GlueforgeError):
    """The engine of this target cannot be built on this machine."""


class EngineBuildError(GlueforgeError):
    """The builder ran and refused the network."""


class Incompatible(GlueforgeError):
    """A bundle needs a runtime or device this machine does not have."""


@dataclass(frozen=True)
class BuildContext:
    """What engine builders need besides the graphs."""

    target_name: str
    io: Mapping[str, Any]  # graph -> {"inputs": [...], "outputs": [...]} of the export's io.json
    prepared: Mapping[str, Any] = field(default_factory=dict)  # graph -> the fuse stage's metadata of it
    sizes: Mapping[str, Any] = field(default_factory=dict)  # "min"/"opt"/"max" [H, W] of the images input (io.json)
    timing_cache_dir: Path = Path("artifacts/timing-cache")
    project_root: Path = Path(".")


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
