"""fuse: the simplified ONNX -> the graph the target's runtime builds from.

What "prepared" means is the runtime module's ``prepare``: fused attention for onnxruntime,
the pre-build lint and FP16 islands for TensorRT, ... A runtime module that defines
``check(graphs, target, context)`` then checks the prepared graphs as a whole (TensorRT: the
TensorRT-RTX parser and builder as a proxy for the Jetson's); a failure stops the model here,
and the record goes into the stage's metadata (the manifest's ``prepared``). An ``int8`` target
first quantizes every graph that takes images (``glueforge/quantize.py``), calibrated on its
calibration set, whose files' names and sha256 are part of the view. Code identity:
this module and the target's runtime module. The
view holds the target's fuse fields only, not its name: targets that differ elsewhere (orin_nano and orin_nx)
share the fused graphs, and a target whose batch profile differs (agx_orin) gets its own parser proxy check.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from glueforge import registry
from glueforge.runtime import BuildContext
from glueforge.schema import TargetSpec
from glueforge.stages import Job, Label, Services, Stage, tool_versions

if TYPE_CHECKING:
    from glueforge.quantize import CalibrationSet

log = logging.getLogger(__name__)
QUANTIZE = "glueforge.quantize"  # imported by name, so that only an int8 target's steps hold it as their code


def _quantize():
    return importlib.import_module(QUANTIZE)


@dataclass(frozen=True)
class FuseView:
    graphs: tuple[str, ...]
    target: TargetSpec  # the runtime's fuse view (``TargetSpec.fuse_fields``)
    calibration: "CalibrationSet | None" = None  # int8 targets: the images the extractor is calibrated on
    colour: str | None = None  # int8 targets: the extractor's colour, as the calibration images are read


class Fuse(Stage):
    name = "fuse"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("simplify", "interface")  # io.json: the input shapes a check builds with

    def modules(self, job: Job, graph: str | None) -> list[str]:
        return [__name__, job.runtime.__name__, *([QUANTIZE] if job.target_spec.quantized else [])]

    def view(self, services: Services, job: Job, graph: str | None) -> FuseView:
        target = job.target_spec.view("fuse")
        if not target.quantized:
            return FuseView(tuple(job.graphs), target)
        quantize = _quantize()
        try:
            calibration = quantize.calibration_set(target.calibration, services.root)
        except quantize.CalibrationError as e:
            raise quantize.CalibrationError(f"{job.config.where}: target {job.target!r}: {e}") from None
        return FuseView(tuple(job.graphs), target, calibration, job.spec.extractor.colour)

    def tools(self, job: Job) -> dict[str, Any]:
        return {**tool_versions(*job.runtime.TOOLS), **(_quantize().tool_versions() if job.target_spec.quantized else {})}

    def build(self, services: Services, view: FuseView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        import onnx

        runtime = registry.runtime(view.target.runtime)
        io = json.loads(inputs["interface"].file("io.json").read_text())
        meta: dict[str, Any] = {}
        calibration = _calibration_images(services, view, io)
        for graph in view.graphs:
            model = onnx.load(str(inputs["simplify"][graph].file(f"{graph}.onnx")))
            quantized = None
            if calibration is not None and _quantize().takes_images(io["graphs"][graph]["inputs"]):
                log.info("quantize %s for %s: calibrating on %d images", graph, label, len(calibration))
                q = _quantize()
                model, quantized = q.quantize(model, q.feeds(io["graphs"][graph]["inputs"], calibration),
                                              runtime.QUANTIZATION, view.target.calibration.method)
            prepared, meta[graph] = runtime.prepare(model, graph, view.target)
            if quantized is not None:
                meta[graph]["int8"] = {**quantized, "calibration": _record(view.calibration)}
            onnx.save(prepared, str(out / f"{graph}.onnx"))
            log.info("fuse %s for %s: %s", graph, view.target.runtime,
                     {k: (len(v) if isinstance(v, list) else v) for k, v in meta[graph].items()})
        check = getattr(runtime, "check", None)
        if check is not None:
            context = BuildContext(target_name=label.target, io=io["graphs"], sizes=io["image_sizes"], prepared=meta,
                                   project_root=services.root)
            meta["check"] = check({g: out / f"{g}.onnx" for g in view.graphs}, view.target, context)
        return meta


def _calibration_images(services: Services, view: FuseView, io: Mapping[str, Any]) -> list[Any] | None:
    """An int8 target's calibration images at the graphs' optimum size; None for a float target."""
    if view.calibration is None:
        return None
    return _quantize().load_images(view.calibration, services.root, io["image_sizes"]["opt"], view.colour)


def _record(calibration: "CalibrationSet") -> dict[str, Any]:
    return {"source": calibration.source, "images": len(calibration.files), "sha256": calibration.digest,
            "files": [name for name, _ in calibration.files]}
