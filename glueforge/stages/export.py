"""export: weights + exporter + patches -> one ONNX graph (a step per graph).

Each graph (end2end, extractor, matcher, and the step graphs of adaptive depth) is its own cached step. Its view is what tracing it
reads (``ExportSettings.for_graph``): the families' specs, the keypoint count, the trace size,
the opset and, for graphs with a matcher, the match output form; plus the digests of the weights
of the parts in it. So the extractor graph is shared by every target with the same keypoint
count (cpu, openvino and the TensorRT targets alike), and a change of the match output form
re-traces only end2end and matcher. The validation data and references are the reference
stage's (``glueforge.stages.reference``); the graphs' I/O spec the interface stage's.

Code identity: this module and the family modules of the parts in the graph, with everything
they import (their patches included).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from glueforge.config import ExportSettings
from glueforge.depth import parse_step
from glueforge.stages import Job, Label, Services, Stage, WeightRef, tool_versions, weights_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceView:
    settings: ExportSettings  # ExportSettings.for_graph
    weights: dict[str, WeightRef]  # of the parts in the graph


def parts(graph: str) -> tuple[str, ...]:
    """The model parts a graph's trace reads: an adaptive-depth step graph (``glueforge.depth``) holds the matcher alone
    and is traced on seeded inputs (its view has no extractor); the matcher graph on the extractor's outputs."""
    if parse_step(graph) is not None:
        return ("matcher",)
    return ("extractor",) if graph == "extractor" else ("extractor", "matcher")


class Export(Stage):
    name = "export"
    per_graph = True

    def modules(self, job: Job, graph: str | None) -> list[str]:
        from glueforge import registry

        return [__name__, *(registry.family(p.family).__name__ for role, p in job.parts.items() if role in parts(graph))]

    def view(self, services: Services, job: Job, graph: str | None) -> TraceView:
        return TraceView(job.settings.for_graph(graph), weights_of(services, job, parts(graph)))

    def tools(self, job: Job) -> dict[str, Any]:
        return tool_versions("torch", "kornia", "onnx")

    def build(self, services: Services, view: TraceView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        weights = {role: services.fetch(ref.name) for role, ref in view.weights.items()}
        log.info("export %s: tracing", label)
        return trace(view.settings, weights, out)


def trace(settings: ExportSettings, weights: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Trace the one graph of ``settings.graphs`` at ``settings.image_size`` with N (or 2B), H and W dynamic, into
    ``out/<graph>.onnx``; its I/O spec goes to ``out/io.json`` and the metadata."""
    import torch

    from glueforge.graphs import Models, graph_io

    (graph,) = settings.graphs
    torch.manual_seed(0)
    models = Models(settings, weights)
    images = trace_images(settings.image_size, models.channels)
    ins, outs = graph_io(graph, settings, models.channels, models.descriptor_dim)
    dynamic = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in ins + outs}
    module, example = models.graph(graph), models.example_inputs(graph, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python scalars are expected and harmless here
        torch.onnx.export(
            module,
            example,
            str(out / f"{graph}.onnx"),
            dynamo=False,
            opset_version=settings.opset,
            input_names=[t.name for t in ins],
            output_names=[t.name for t in outs],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    io = {"inputs": [t.as_dict() for t in ins], "outputs": [t.as_dict() for t in outs],
          "flops": flops(graph, module, example, settings)}
    (out / "io.json").write_text(json.dumps(io, indent=1))
    return {"graph": graph, "exporter": "torch.onnx.export (TorchScript, dynamo=False)"}


def flops(graph: str, module, example, settings: ExportSettings) -> dict[str, Any]:
    """The graph's FLOPs per unit of its batch at the trace size and K (``glueforge.floor``): the example is one
    pair, so two images for the extractor."""
    from glueforge import floor

    total = floor.count(module, example)
    per, units = ("image", 2) if graph == "extractor" else ("pair", 1)
    return {"count": total // units, "per": per, "image_size": list(settings.image_size), "keypoints": settings.keypoints,
            "counted_with": "torch.utils.flop_counter on the patched module (a multiply-add is 2 FLOPs)"}


def trace_images(size_hw, channels: int):
    """The example a graph is traced with: one seeded pair of smooth random images (2, C, H, W) in [0, 1].

    The graphs have no data-dependent control flow (fixed K, padded slots), so the example shapes the trace
    and not its values; it is generated here rather than read from the validation images, so that editing
    validation's data re-traces nothing (validation compares the engines with the golden outputs of the
    patched model on the real photographs)."""
    import torch

    h, w = size_hw
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, channels, max(h // 16, 1), max(w // 16, 1), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
