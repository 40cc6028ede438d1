"""The transformer fusions of onnxruntime (``onnxruntime.transformers``) for a GPU provider.

onnxruntime's CUDA provider runs one kernel per node, so a LightGlue matcher of about 1700 nodes is bound
by kernel launches, not arithmetic (61 GFLOP: a fraction of a millisecond on an H200, 3.9 ms run; issue 21).
The fusions of its transformer optimizer replace node patterns with its contrib ops (Gelu, FastGelu,
LayerNormalization, SkipLayerNormalization, BiasGelu, ...), run offline here (``opt_level=0``: graph
rewriting in Python, no session), on a graph whose attention :func:`glueforge.attention.fuse_attention`
has already made ``MultiHeadAttention``: the optimizer's own attention fusion looks for BERT's pattern,
which LightGlue's is not, and is switched off, as are the fusions of embeddings and quantized MatMuls,
which these models do not have. What is fused is recorded, per op type.
"""

from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)


def fuse_transformer_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with onnxruntime's transformer fusions applied; returns it and the fused ops' counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False  # MultiHeadAttention is ours (glueforge.attention)
    options.enable_rotary_embeddings = False  # LightGlue's rotary encoding is not the op's (interleaved, learned)
    options.enable_embed_layer_norm = False
    options.enable_qordered_matmul = False
    for name in list(logging.root.manager.loggerDict):  # the optimizer's modules log each fusion at INFO
        if name.startswith(("fusion_", "onnx_model")):
            logging.getLogger(name).setLevel(logging.WARNING)
    before, nodes = _counts(model), len(model.graph.node)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the optimizer rewrites the graph it is given
    optimized = optimize_model(copy, model_type="bert", num_heads=0, hidden_size=0, optimization_options=options,
                               opt_level=0, use_gpu=True)
    fused = optimized.model
    after = _counts(fused)
    added = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
    log.info("transformer fusions: %d -> %d nodes; %s", nodes, len(fused.graph.node), added or "none")
    return fused, added


def _counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
