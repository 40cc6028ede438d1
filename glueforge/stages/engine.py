"""engine: the prepared ONNX -> the deployable engine of the target's runtime.

The runtime module's ``build`` writes the engine files and returns the manifest's runtime
block. A runtime that cannot build on this machine (TensorRT without TensorRT) fails this
stage with a message naming what is missing and where it can run; it never writes a
placeholder. Code identity: this module and the target's runtime module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from glueforge.cache import Result
from glueforge.runtime import BuildContext
from glueforge.stages import Job, Services, Stage


class Engine(Stage):
    name = "engine"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("fuse", "export")  # the export's io.json gives the builders the input shapes

    def modules(self, job: Job) -> list[str]:
        return [__name__, job.runtime.__name__]

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"target": job.target_spec.engine_settings(), "tools": job.runtime.versions()}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        fused = inputs["fuse"]
        io = json.loads(inputs["export"].file("io.json").read_text())
        context = BuildContext(
            target_name=job.target,
            io=io["graphs"],
            sizes=io["image_sizes"],
            prepared=fused.meta,
            timing_cache_dir=services.artifacts / "timing-cache",
            project_root=services.root,
        )
        graphs = {g: fused.file(f"{g}.onnx") for g in job.graphs}
        return job.runtime.build(graphs, out, job.target_spec, context)
