"""FP16 graphs with FP32 islands, for runtimes that build FP16 engines.

Two ways to use the islands: a strongly typed runtime takes :func:`to_fp16`'s graph, where
weights and activations are float16 except the islands, with Casts at their borders
(onnxruntime's float16 converter; inputs and outputs keep their types); a weakly typed
runtime keeps the FP32 graph and pins the :func:`fp32_islands` layers to FP32 with precision
constraints.

FP32 islands: normalisation (LayerNormalization, InstanceNormalization, the descriptor norm),
softmax and log-softmax of attention and assignment, exponentials and logarithms of the
assignment and the soft-argmax, TopK, GridSample, Resize and Range, every node on the path
from a TopK to the ``keypoints`` output (keypoint coordinates: FP16 has a 0.5 px step at
640 px), and every node on the path from a Range to a GridSample's grid (sampling grids made
from the dynamic image shape). None of them is a GEMM: some FP16 targets cannot run an FP32 GEMM at all (Turing under
TensorRT-RTX).
"""

from __future__ import annotations

from typing import Sequence

import onnx

FP32_ISLAND_OPS = (
    "LayerNormalization", "InstanceNormalization", "Softmax", "LogSoftmax", "Log", "Softplus", "Exp", "Sigmoid", "ReduceL2", "ReduceMax",
    "TopK", "GridSample", "Resize",
    "Range",  # coordinate grids from the dynamic image shape; TensorRT's Range takes no FP16 (and FP16 steps 2 above 2048)
)


def _ancestors(model: onnx.ModelProto, tensors: list[str]) -> set[str]:
    """Names of the nodes that ``tensors`` depend on."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found: set[str] = set()
    stack = list(tensors)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            stack.extend(node.input)
    return found


def _descendants(model: onnx.ModelProto, tensors: list[str]) -> set[str]:
    """Names of the nodes that depend on ``tensors``."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    found: set[str] = set()
    stack = list(tensors)
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in found:
                found.add(node.name)
                stack.extend(node.output)
    return found


def keypoint_chain(model: onnx.ModelProto) -> list[str]:
    """Names of the coordinate nodes: those between a TopK and the ``keypoints`` output, and those
    between a Range and the ``grid`` input of a GridSample that depend on no input's values, only
    on shapes (a sampling grid made from the image size, which FP16 would put up to 0.5 px off at
    640 px)."""
    topk = [o for n in model.graph.node if n.op_type == "TopK" for o in n.output]
    ranges = [o for n in model.graph.node if n.op_type == "Range" for o in n.output]
    grids = [n.input[1] for n in model.graph.node if n.op_type == "GridSample"]
    keypoints = [o.name for o in model.graph.output if o.name == "keypoints"]
    keypoint = _descendants(model, topk) & _ancestors(model, keypoints)
    shape_grids = (_descendants(model, ranges) & _ancestors(model, grids)) - _value_dependent(model)
    return sorted(keypoint | shape_grids)


def _value_dependent(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose outputs depend on the values of a graph input (not only on its shape)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    found: set[str] = set()
    stack = [i.name for i in model.graph.input]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.op_type != "Shape" and node.name not in found:  # a Shape reads the shape only
                found.add(node.name)
                stack.extend(node.output)
    return found


def fp32_islands(model: onnx.ModelProto, island_ops: Sequence[str] = FP32_ISLAND_OPS) -> list[str]:
    """The nodes a weakly typed FP16 build pins to FP32: the island ops and the coordinate nodes, those
    that compute in float (integer shape arithmetic and an integer Range have no precision to pin)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    floats = {n.name for n in model.graph.node if any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)}
    return sorted(({n.name for n in model.graph.node if n.op_type in island_ops} | set(keypoint_chain(model))) & floats)


def to_fp16(model: onnx.ModelProto, island_ops: Sequence[str] = FP32_ISLAND_OPS) -> onnx.ModelProto:
    """``model`` in float16 but for the ``island_ops`` nodes and the coordinate chains, with Casts at their borders; a
    runtime whose kernel of an island op computes in float from float16 inputs may leave it out of ``island_ops``."""
    import onnx_graphsurgeon as gs
    from onnxruntime.transformers.float16 import convert_float_to_float16

    by_name = {n.name: n for n in model.graph.node}
    # a node named in both block lists gets its border Casts twice (duplicate outputs): name each once
    chain = [n for n in keypoint_chain(model) if by_name[n].op_type not in island_ops]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(island_ops), node_block_list=chain)
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
    _skip_fp16_round_trips(converted)
    return gs.export_onnx(gs.import_onnx(converted).cleanup().toposort())


def _skip_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Make every ``Cast(float32)`` of a ``Cast(float16)`` cast the latter's input directly.

    Between two FP32 nodes the converter still writes the tensor out as float16 and reads it
    back (its value_info says float16), and it turns the graph's own int-to-float Casts into
    int-to-float16 ones, so an FP32 chain (a sampling grid, keypoint coordinates) is rounded to
    FP16 at every step: 0.25 px at 640 px. The round trip only loses precision; what is left of
    the float16 Cast feeds the FP16 nodes, if any.
    """
    producers = {o: n for n in model.graph.node for o in n.output}

    def cast_to(node: onnx.NodeProto | None) -> int:
        return next((a.i for a in node.attribute if a.name == "to"), -1) if node is not None and node.op_type == "Cast" else -1

    count = 0
    for node in model.graph.node:
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if cast_to(node) == onnx.TensorProto.FLOAT and cast_to(first) == onnx.TensorProto.FLOAT16:
            node.input[0] = first.input[0]
            count += 1
    return count
