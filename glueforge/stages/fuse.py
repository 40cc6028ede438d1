"""fuse: the simplified ONNX -> the graph the target's runtime builds from.

What "prepared" means is the runtime module's ``prepare``: fused attention for onnxruntime,
the pre-build lint and FP16 islands for TensorRT, ... A runtime module that defines
``check(graphs, target, context)`` then checks the prepared graphs as a whole (TensorRT: the
TensorRT-RTX parser and builder as a proxy for the Jetson's); a failure stops the model here,
and the record goes into the stage's metadata (the manifest's ``prepared``). Code identity:
this module and the target's runtime module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from glueforge.cache import Result
from glueforge.runtime import BuildContext
from glueforge.stages import Job, Services, Stage, tool_versions

log = logging.getLogger(__name__)


class Fuse(Stage):
    name = "fuse"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("simplify", "export")  # the export's io.json: the input shapes a check builds with

    def modules(self, job: Job) -> list[str]:
        return [__name__, job.runtime.__name__]

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"target": job.target_spec.prepare_settings(), "tools": tool_versions(*job.runtime.TOOLS)}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        import onnx

        meta = {}
        for graph in job.graphs:
            model = onnx.load(str(inputs["simplify"].file(f"{graph}.onnx")))
            prepared, meta[graph] = job.runtime.prepare(model, graph, job.target_spec)
            onnx.save(prepared, str(out / f"{graph}.onnx"))
            log.info("fuse %s for %s: %s", graph, job.target_spec.runtime,
                     {k: (len(v) if isinstance(v, list) else v) for k, v in meta[graph].items()})
        check = getattr(job.runtime, "check", None)
        if check is not None:
            io = json.loads(inputs["export"].file("io.json").read_text())
            context = BuildContext(target_name=job.target, io=io["graphs"], sizes=io["image_sizes"], prepared=meta,
                                   project_root=services.root)
            meta["check"] = check({g: out / f"{g}.onnx" for g in job.graphs}, job.target_spec, context)
        return meta
