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
- ``check(graphs, target, context) -> record`` (optional): a check of the prepared graphs that
  the fuse stage runs after ``prepare`` (TensorRT: TensorRT-RTX's parser and builder as a proxy
  for the Jetson's); it raises on a graph the target cannot take, and its record goes into the
  manifest's ``prepared``;
- ``build(graphs, out, target, context) -> meta``: the engine files in ``out``, and the
  manifest's ``runtime`` block (name, versions, devices, ``files``: graph -> file); the
  engine stage. A runtime that cannot build here raises :class:`EngineUnavailable` saying
  what is missing and where the build can run;
- ``versions() -> dict``: the installed versions that shape its engines (engine key);
- ``runner(directory, graph, name) -> polygraphy runner``: runs one graph of an engine
  directory (a cache entry or a bundle); validation, parity and later users run engines
  only through it;
- ``open_graph(directory, graph, manifest) -> GraphRunner``: the engine itself, for the runtime
  API (``glueforge.api``) and ``glueforge bench``, with no polygraphy and no torch;
- ``matmul_rate(directory) -> dict | None`` (optional): the fp32 matrix-multiply rate of the
  processor the engines run on, measured now with the engines' settings (``glueforge.floor``:
  bench's "x floor"); None, or absent, where it is not measured;
- ``runs_here(target) -> str | None``: why this machine cannot run the target's engines (the
  benchmark stage then records the device command instead of figures), or None;
- ``measured_with``: what validation of its engines actually runs, for the manifest;
- ``check_compatibility(manifest)``: refuses a bundle this machine cannot run (pull);
  standard library only, like the rest of the pull side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

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
    model: str = ""  # for messages only (a device command): never part of a key


def recorded_settings(directory: Path, name: str, schema: type):
    """The session settings an engine directory records in ``name`` (a JSON file), as ``schema`` (a pydantic model):
    the fields it knows, so that the runtime name and versions recorded beside them are left out."""
    import json

    recorded = json.loads((Path(directory) / name).read_text())
    return schema(**{k: v for k, v in recorded.items() if k in schema.model_fields})


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


class GraphRunner(Protocol):
    """One graph of a bundle or engine directory, loaded and ready: numpy arrays in and out.

    What a runtime module's ``open_graph(directory, graph, manifest)`` returns, and all that the
    runtime API (``glueforge.api``) and ``glueforge bench`` use of an engine.
    """

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """Run once: input name -> array; returns output name -> array, in the graph's output order."""
        ...

    def device_memory(self) -> int | None:
        """Bytes this engine holds on the device (activations, I/O buffers); None where it runs on the host."""
        ...

    def close(self) -> None: ...


class PolygraphyGraph:
    """A polygraphy runner (what validation runs, ``runner(directory, graph, name)``) as a :class:`GraphRunner`."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        runner.activate()

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._runner.infer(dict(feed)))

    def device_memory(self) -> int | None:
        return None

    def close(self) -> None:
        if self._runner.is_active:
            self._runner.deactivate()
