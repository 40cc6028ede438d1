"""engine: the prepared ONNX -> the deployable engine of the target's runtime.

The runtime module's ``build`` writes the engine files and returns the manifest's runtime
block. A runtime that cannot build on this machine (TensorRT without TensorRT) fails this
stage with a message naming what is missing and where it can run; it never writes a
placeholder. Code identity: this module and the target's runtime module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from glueforge import registry
from glueforge.runtime import BuildContext
from glueforge.schema import TargetSpec
from glueforge.stages import Job, Label, Services, Stage


@dataclass(frozen=True)
class EngineView:
    graphs: tuple[str, ...]
    target: TargetSpec  # its engine view: everything but tolerances, thresholds, description and benchmark
    target_name: str  # named in the device commands the engine records


class Engine(Stage):
    name = "engine"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("fuse", "interface")  # io.json gives the builders the input shapes

    def modules(self, job: Job, graph: str | None) -> list[str]:
        return [__name__, job.runtime.__name__]

    def view(self, services: Services, job: Job, graph: str | None) -> EngineView:
        return EngineView(tuple(job.graphs), job.target_spec.view("engine"), job.target)

    def tools(self, job: Job) -> dict[str, Any]:
        return job.runtime.versions()

    def build(self, services: Services, view: EngineView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        fused = inputs["fuse"]
        io = json.loads(inputs["interface"].file("io.json").read_text())
        context = BuildContext(
            target_name=view.target_name,
            io=io["graphs"],
            sizes=io["image_sizes"],
            prepared=fused.meta,
            timing_cache_dir=services.artifacts / "timing-cache",
            project_root=services.root,
            model=label.model,
        )
        graphs = {g: fused.file(f"{g}.onnx") for g in view.graphs}
        return registry.runtime(view.target.runtime).build(graphs, out, view.target, context)
