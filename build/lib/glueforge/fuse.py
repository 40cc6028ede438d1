"""fuse: the simplified ONNX -> the graph a target's runtime builds from.

- onnxruntime targets: attention fusion into ``com.microsoft`` ops (``glueforge/attention.py``).
- TensorRT targets: standard ONNX ops only, checked by the pre-build lint
  (``glueforge/lint.py``); LayerNormalization stays one op (opset >= 17).
  - ``tensorrt_rtx`` builds strongly typed networks only, so FP16 is in the graph: weights
    and activations become float16 except the FP32 islands below, with Casts at their
    borders (onnxruntime's float16 converter). Inputs and outputs keep their types.
  - ``tensorrt`` keeps the FP32 graph; the engine is built with the FP16 flag and the
    islands' layers are pinned to FP32 by precision constraints (listed in the metadata).

FP32 islands: normalisation (LayerNormalization, InstanceNormalization, the descriptor norm),
softmax and log-softmax of attention and assignment, exponentials and logarithms of the
assignment and the soft-argmax, TopK, GridSample and Resize, and every node on the path
from a TopK to the ``keypoints`` output (keypoint coordinates: FP16 has a 0.5 px step at
640 px). None of them is a GEMM, as TensorRT-RTX cannot compile FP32 GEMMs for Turing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from glueforge.config import TENSORRT_RUNTIMES, Target
from glueforge.lint import check

log = logging.getLogger(__name__)

FP32_ISLAND_OPS = (
    "LayerNormalization", "InstanceNormalization", "Softmax", "LogSoftmax", "Log", "Softplus", "Exp", "Sigmoid", "ReduceL2", "ReduceMax",
    "TopK", "GridSample", "Resize",
)


def keypoint_chain(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes between a TopK and the ``keypoints`` output (coordinates)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    ancestors: set[str] = set()
    stack = [o.name for o in model.graph.output if o.name == "keypoints"]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(node.input)
    descendants: set[str] = set()
    stack = [o for n in model.graph.node if n.op_type == "TopK" for o in n.output]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in descendants:
                descendants.add(node.name)
                stack.extend(node.output)
    return sorted(ancestors & descendants)


def fp32_islands(model: onnx.ModelProto) -> list[str]:
    return sorted({n.name for n in model.graph.node if n.op_type in FP32_ISLAND_OPS} | set(keypoint_chain(model)))


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs
    from onnxruntime.transformers.float16 import convert_float_to_float16

    by_name = {n.name: n for n in model.graph.node}
    # a node named in both block lists gets its border Casts twice (duplicate outputs): name each once
    chain = [n for n in keypoint_chain(model) if by_name[n].op_type not in FP32_ISLAND_OPS]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_ISLAND_OPS), node_block_list=chain)
    # The converter inserts one border Cast per consumer under the same name when a tensor
    # feeds several FP32 nodes (identical duplicates), and appends its I/O Casts at the end of
    # the node list: keep one of each and sort again.
    seen: dict[tuple[str, ...], onnx.NodeProto] = {}
    nodes = []
    for node in converted.graph.node:
        outputs = tuple(node.output)
        if outputs in seen:
            if seen[outputs].SerializeToString() != node.SerializeToString():
                raise ValueError(f"float16 conversion produced two different nodes for {outputs}")
            continue
        seen[outputs] = node
        nodes.append(node)
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    return gs.export_onnx(gs.import_onnx(converted).toposort())


def fuse(source: Path, dest: Path, graph: str, target: Target) -> dict[str, Any]:
    model = onnx.load(str(source))
    if target.runtime not in TENSORRT_RUNTIMES:
        from glueforge.attention import fuse_attention

        fused, count = fuse_attention(model)
        onnx.save(fused, str(dest))
        return {"attention_fused": count}
    warnings = check(model, graph, target.runtime, target.tensorrt_version)
    for finding in warnings:
        log.warning("lint %s: %s", graph, finding)
    meta: dict[str, Any] = {"lint_warnings": [str(f) for f in warnings]}
    islands = fp32_islands(model)
    if target.precision == "fp16" and target.runtime == "tensorrt_rtx":
        model = to_fp16(model)
        onnx.checker.check_model(model)
        meta["precision"] = "fp16 graph with fp32 islands"
    elif target.precision == "fp16":
        meta["precision"] = "fp32 graph; fp16 builder flag with fp32 precision constraints"
    meta["fp32_layers"] = islands
    check(model, graph, target.runtime, target.tensorrt_version)
    onnx.save(model, str(dest))
    log.info("fuse %s for %s: %d fp32 island nodes", graph, target.runtime, len(islands))
    return meta
