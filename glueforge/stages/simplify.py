"""simplify: onnxsim, then symbolic shape inference; every tensor must end with a known shape.

Static dimensions stay numbers; dynamic ones (the batch, the match count M) become named
symbols. A tensor whose rank or a dimension is still unknown after both passes is an error
that names it: such a graph would fail later in TensorRT's parser or an optimiser.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Mapping

from glueforge import GlueforgeError
from glueforge.stages import Job, Label, Services, Stage, tool_versions

log = logging.getLogger(__name__)
# the symbolic shape inference of ONNX Runtime's tools, used here as a graph tool (not as a runtime)
SHAPE_INFERENCE = "onnxruntime.tools.symbolic_shape_infer"


class ShapeError(GlueforgeError):
    """A tensor of the simplified graph has no known shape."""


class Simplify(Stage):
    name = "simplify"
    per_graph = True

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("export",)

    def view(self, services: Services, job: Job, graph: str | None) -> str:
        return graph  # the file name of its graph; nothing of the configuration

    def tools(self, job: Job) -> dict[str, Any]:
        return tool_versions("onnx", "onnxsim", SHAPE_INFERENCE.split(".")[0])

    def build(self, services: Services, graph: str, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        return simplify(inputs["export"].file(f"{graph}.onnx"), out / f"{graph}.onnx")


def simplify(source: Path, dest: Path) -> dict[str, Any]:
    import onnx
    import onnxsim

    SymbolicShapeInference = importlib.import_module(SHAPE_INFERENCE).SymbolicShapeInference

    model = onnx.load(str(source))
    nodes_before = len(model.graph.node)
    simplified, _ = onnxsim.simplify(model, check_n=0)
    inferred = SymbolicShapeInference.infer_shapes(simplified, auto_merge=True)
    if inferred is None:
        raise ShapeError(f"{source.name}: symbolic shape inference failed")
    unknown = unknown_shapes(inferred)
    if unknown:
        raise ShapeError(f"{source.name}: {len(unknown)} tensors without a known shape after simplification: "
                         + ", ".join(unknown[:10]))
    onnx.checker.check_model(inferred)
    onnx.save(inferred, str(dest))
    log.info("simplify %s: %d -> %d nodes", source.name, nodes_before, len(inferred.graph.node))
    return {"nodes_before": nodes_before, "nodes_after": len(inferred.graph.node)}


def unknown_shapes(model) -> list[str]:
    """Names of graph outputs and intermediate tensors with an unknown rank or dimension."""
    typed = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    produced = [o for n in model.graph.node for o in n.output if o]
    missing = []
    for name in produced:
        value = typed.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            missing.append(name)
            continue
        if any(not (d.HasField("dim_value") or d.HasField("dim_param")) for d in value.type.tensor_type.shape.dim):
            missing.append(name)
    return missing
