"""Attention fusion for onnxruntime targets: MatMul-Softmax-MatMul -> com.microsoft.MultiHeadAttention.

The exported LightGlue attention (``patches/lightglue_static_heads``) is, per head group,

    S = MatMul(Q, Transpose(K, [0, 1, 3, 2]))   [* scale]   [+ bias]   Q, K, V: (B, heads, N, d)
    O = MatMul(Softmax(S, axis=-1), V)  ->  Transpose([0, 2, 1, 3])  ->  Reshape (B, N, heads * d)

and the cross block also takes ``Softmax(Transpose(S) [+ bias])``, the attention of image 1
to image 0. ``bias`` is the additive key mask of padded keypoints (``patches/lightglue_fixed_depth``),
(B, 1, 1, T). Each match becomes one ``MultiHeadAttention`` (query (B, N, heads * d), key and
value (B, T, heads * d), ``scale`` from the Mul) whose (B, N, heads * d) output feeds the
original Reshape; a bias becomes its ``attention_bias`` input, which the contrib op takes as
(B or 1, heads or 1, S, T) with no broadcast over S: an ``Expand`` to (1, 1, S, T) (bidirectional
broadcast) gives it that shape. Nodes left without consumers are removed. TensorRT targets never
get this: the op exists only in onnxruntime; they keep the standard MatMul-Add-Softmax-MatMul.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)
DOMAIN = "com.microsoft"


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update({name: list(value.shape) for name, value in constants.items()})

    replacements: dict[str, list[onnx.NodeProto]] = {}  # Reshape node name -> nodes replacing it
    removed: set[str] = set()
    count = biased = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        if _attr(softmax, "axis", -1) not in (-1, 3):
            continue
        scores, bias = softmax.input[0], None
        found = _scores(scores, producers, constants)
        add = producers.get(scores)
        if found is None and add is not None and add.op_type == "Add":
            for i, j in ((0, 1), (1, 0)):
                found = _scores(add.input[i], producers, constants)
                if found is not None:
                    bias = add.input[j]
                    break
        if found is None:
            continue
        q, k, scale = found
        after = consumers.get(softmax.output[0], [])
        if len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != softmax.output[0]:
            continue
        av = after[0]
        transpose = consumers.get(av.output[0], [])
        if len(transpose) != 1 or transpose[0].op_type != "Transpose" or _perm(transpose[0]) != [0, 2, 1, 3]:
            continue
        reshape = consumers.get(transpose[0].output[0], [])
        if len(reshape) != 1 or reshape[0].op_type != "Reshape":
            continue
        heads = shapes.get(q, [None, None])[1]
        if not isinstance(heads, int) or heads <= 0:
            continue
        if bias is not None and (bias not in shapes or len(shapes[bias]) > 4):
            continue  # attention_bias is rank 4: a bias of unknown or higher rank stays unfused (and correct)
        prefix = f"{softmax.name}/fused"
        shape3 = f"{prefix}/query_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), shape3))
        to_bsd = [
            node
            for role, tensor in (("query", q), ("key", k), ("value", av.input[1]))
            for node in (
                helper.make_node("Transpose", [tensor], [f"{prefix}/{role}_bsnh"], perm=[0, 2, 1, 3], name=f"{prefix}/{role}/Transpose"),
                helper.make_node("Reshape", [f"{prefix}/{role}_bsnh", shape3], [f"{prefix}/{role}"], name=f"{prefix}/{role}/Reshape"),
            )
        ]
        inputs = [f"{prefix}/query", f"{prefix}/key", f"{prefix}/value"]
        if bias is not None:
            to_bsd.extend(_bias_to_bnst(graph, prefix, bias, q, k, shapes))
            inputs += ["", "", f"{prefix}/attention_bias"]  # bias, key_padding_mask, attention_bias
        replacements[reshape[0].name] = [
            *to_bsd,
            helper.make_node("MultiHeadAttention", inputs, [f"{prefix}/context"],
                             name=f"{prefix}/MultiHeadAttention", domain=DOMAIN, num_heads=heads, scale=scale),
            # the original Reshape stays: it may flatten to (B * N, heads * d) for a Gemm
            helper.make_node("Reshape", [f"{prefix}/context", reshape[0].input[1]], list(reshape[0].output),
                             name=reshape[0].name),
        ]
        removed.update({softmax.name, av.name, transpose[0].name})
        count += 1
        biased += bias is not None
    if not count:
        return model, 0

    nodes = []
    for node in graph.node:
        if node.name in replacements:
            nodes.extend(replacements[node.name])
        elif node.name not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(_without_dead(nodes, {o.name for o in graph.output}))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    log.info("fused %d attention blocks into %s.MultiHeadAttention (%d with attention_bias)", count, DOMAIN, biased)
    return model, count


def _scores(
    tensor: str, producers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> Optional[tuple[str, str, float]]:
    """``tensor`` = [Transpose(]MatMul(Q, Transpose(K))[ * scale][)] -> (Q, K, scale), or None.

    With the outer Transpose (the scores of the other direction), Q and K swap roles.
    """
    node, swapped, scale = producers.get(tensor), False, 1.0
    if node is not None and node.op_type == "Transpose" and _perm(node) == [0, 1, 3, 2]:
        node, swapped = producers.get(node.input[0]), True
    if node is not None and node.op_type == "Mul":
        const = [i for i in node.input if i in constants and constants[i].size == 1]
        if const:
            scale = float(constants[const[0]].reshape(-1)[0])
            node = producers.get(next(i for i in node.input if i != const[0]))
    if node is None or node.op_type != "MatMul":
        return None
    q, k_t = node.input
    k_node = producers.get(k_t)
    if k_node is None or k_node.op_type != "Transpose" or _perm(k_node) != [0, 1, 3, 2]:
        return None
    k = k_node.input[0]
    return (k, q, scale) if swapped else (q, k, scale)


def _bias_to_bnst(graph: onnx.GraphProto, prefix: str, bias: str, q: str, k: str,
                  shapes: dict[str, list]) -> list[onnx.NodeProto]:
    """Nodes giving ``{prefix}/attention_bias``: ``bias`` (broadcastable to (B, heads, S, T)) expanded
    to (B or 1, heads or 1, S, T), the shape MultiHeadAttention takes. S and T are the query's and
    the key's sequence lengths (dimension 2 of Q and K, (B, heads, S or T, d)): constants where the
    shapes are static, else read with Shape."""
    s, t = shapes.get(q, [None] * 3)[2], shapes.get(k, [None] * 3)[2]
    out = f"{prefix}/attention_bias"
    target = f"{prefix}/attention_bias_shape"
    if isinstance(s, int) and isinstance(t, int) and s > 0 and t > 0:
        graph.initializer.append(numpy_helper.from_array(np.array([1, 1, s, t], dtype=np.int64), target))
        nodes = []
    else:
        ones = f"{prefix}/ones"
        graph.initializer.append(numpy_helper.from_array(np.array([1, 1], dtype=np.int64), ones))
        nodes = [helper.make_node("Shape", [q], [f"{prefix}/query_length"], start=2, end=3, name=f"{prefix}/query_length/Shape"),
                 helper.make_node("Shape", [k], [f"{prefix}/key_length"], start=2, end=3, name=f"{prefix}/key_length/Shape"),
                 helper.make_node("Concat", [ones, f"{prefix}/query_length", f"{prefix}/key_length"], [target], axis=0,
                                  name=f"{prefix}/attention_bias_shape/Concat")]
    return [*nodes, helper.make_node("Expand", [bias, target], [out], name=f"{prefix}/attention_bias/Expand")]


def _without_dead(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is used, repeatedly."""
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            return alive
        nodes = alive
