"""fuse: the simplified ONNX -> the graph the target's runtime builds from.

What "prepared" means is the runtime module's ``prepare``: fused attention for onnxruntime,
the pre-build lint and FP16 islands for TensorRT, ... A runtime module that defines
``check(graphs, target, context)`` then checks the prepared graphs as a whole (TensorRT: the
TensorRT-RTX parser and builder as a proxy for the Jetson's); a failure stops the model here,
and the record goes into the stage's metadata (the manifest's ``prepared``). Code identity:
this module and the target's runtime module. The
view holds the target's fuse fields only, not its name: targets that differ elsewhere (orin_nano and orin_nx)
share the fused graphs, and a target whose batch profile differs (agx_orin) gets its own parser proxy check.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from glueforge import registry
from glueforge.runtime import BuildContext
from glueforge.schema import TargetSpec
from glueforge.stages import Job, Label, Services, Stage, tool_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FuseView:
    graphs: tuple[str, ...]
    target: TargetSpec  # the runtime's fuse view (``TargetSpec.fuse_fields``)


class Fuse(Stage):
    name = "fuse"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("simplify", "interface")  # io.json: the input shapes a check builds with

    def modules(self, job: Job, graph: str | None) -> list[str]:
        return [__name__, job.runtime.__name__]

    def view(self, services: Services, job: Job, graph: str | None) -> FuseView:
        return FuseView(tuple(job.graphs), job.target_spec.view("fuse"))

    def tools(self, job: Job) -> dict[str, Any]:
        return tool_versions(*job.runtime.TOOLS)

    def build(self, services: Services, view: FuseView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        import onnx

        runtime = registry.runtime(view.target.runtime)
        meta = {}
        for graph in view.graphs:
            model = onnx.load(str(inputs["simplify"][graph].file(f"{graph}.onnx")))
            prepared, meta[graph] = runtime.prepare(model, graph, view.target)
            onnx.save(prepared, str(out / f"{graph}.onnx"))
            log.info("fuse %s for %s: %s", graph, view.target.runtime,
                     {k: (len(v) if isinstance(v, list) else v) for k, v in meta[graph].items()})
        check = getattr(runtime, "check", None)
        if check is not None:
            io = json.loads(inputs["interface"].file("io.json").read_text())
            context = BuildContext(target_name=label.target, io=io["graphs"], sizes=io["image_sizes"], prepared=meta,
                                   project_root=services.root)
            meta["check"] = check({g: out / f"{g}.onnx" for g in view.graphs}, view.target, context)
        return meta
