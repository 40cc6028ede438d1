"""FP16 graphs with FP32 islands, for runtimes that build FP16 engines.

Two ways to use the islands: a strongly typed runtime takes :func:`to_fp16`'s graph, where
weights and activations are float16 except the islands, with Casts at their borders
(onnxruntime's float16 converter; inputs and outputs keep their types); a weakly typed
runtime keeps the FP32 graph and pins the :func:`fp32_islands` layers to FP32 with precision
constraints.

FP32 islands: normalisation (LayerNormalization, InstanceNormalization, the descriptor norm),
softmax and log-softmax of attention and assignment, exponentials and logarithms of the
assignment and the soft-argmax, TopK, GridSample and Resize, and every node on the path
from a TopK to the ``keypoints`` output (keypoint coordinates: FP16 has a 0.5 px step at
640 px). None of them is a GEMM: some FP16 targets cannot run an FP32 GEMM at all (Turing under
TensorRT-RTX).
"""

from __future__ import annotations

import onnx

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
