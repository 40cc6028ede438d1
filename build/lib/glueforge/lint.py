"""Pre-build lint of an ONNX graph for TensorRT targets; runs on any machine.

Catches, before the device, what otherwise only fails in the engine build there:

- ops in a non-standard domain (``com.microsoft`` fused ops and other ORT-only ops);
- ops TensorRT's ONNX parser does not import (onnx-tensorrt ``docs/operators.md``, 10.x),
  and NonZero on TensorRT-RTX, whose parser needs a plugin it does not ship;
- TopK with K above 3840, or with K not known when the engine is built;
- INT64 and shape-tensor hazards: int64 graph I/O before TensorRT 10 (cast down to INT32),
  and shape inputs (Reshape, Expand, Tile, ConstantOfShape, Range, Resize sizes, TopK K)
  computed from tensor values instead of from shapes and constants, which TensorRT must
  then treat as data-dependent shape tensors;
- data-dependent output shapes (NonZero), which TensorRT 10 only runs with an output allocator.

Each finding names the node and its op.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from packaging.version import Version

from glueforge.config import TENSORRT_MAX_TOPK

# onnx-tensorrt docs/operators.md, TensorRT 10.x: operators with "Y".
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DepthToSpace DequantizeLinear Div Dropout
DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max
MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape
Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
STANDARD_DOMAINS = ("", "ai.onnx")
# input index of a shape-like operand, per op
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
                "Resize": (3,), "TopK": (1,)}
SHAPE_OPS = {"Shape", "Size", "Constant", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Add", "Sub",
             "Mul", "Div", "Reshape", "Identity", "Max", "Min", "Floor", "Ceil", "Equal", "Where", "ConstantOfShape",
             "ReduceProd", "Neg"}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" refuses the build, "warning" is reported
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: node {self.node!r} ({self.op}): {self.message}"


class LintError(RuntimeError):
    def __init__(self, graph: str, runtime: str, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__(f"{graph}: {len(errors)} problem(s) for {runtime}:\n" + "\n".join(f"  {f}" for f in errors))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _shape_like(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> set[str]:
    """Tensors computed only from shapes and constants (TensorRT's build-time shape tensors)."""
    known = set(constants)
    for node in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type in ("Shape", "Size") or (
            node.op_type in SHAPE_OPS and all(i in known for i in node.input if i)
        ):
            known.update(node.output)
    return known


def lint(model: onnx.ModelProto, runtime: str, tensorrt_version: str | None = None) -> list[Finding]:
    findings: list[Finding] = []
    constants = _constants(model)
    shape_like = _shape_like(model, constants)
    for node in model.graph.node:
        name, op = node.name or node.output[0], node.op_type
        if node.domain not in STANDARD_DOMAINS:
            findings.append(Finding("error", name, f"{node.domain}.{op}",
                                    f"op of domain {node.domain!r} (onnxruntime-only or custom); TensorRT's ONNX parser has no importer for it"))
            continue
        if op not in TENSORRT_OPS:
            findings.append(Finding("error", name, op, "not supported by TensorRT's ONNX parser (onnx-tensorrt operators.md)"))
        if op == "NonZero":
            if runtime == "tensorrt_rtx":
                findings.append(Finding("error", name, op, "TensorRT-RTX has no NonZero importer (its plugin creator is not shipped); "
                                                           "use the dense match outputs"))
            else:
                findings.append(Finding("warning", name, op, "data-dependent output shape: needs an IOutputAllocator at run time"))
        if op == "TopK":
            k = constants.get(node.input[1])
            if k is None:
                findings.append(Finding("error", name, op, "K is computed at run time; TensorRT needs K known when the engine is built"))
            elif int(np.asarray(k).reshape(-1)[0]) > TENSORRT_MAX_TOPK:
                findings.append(Finding("error", name, op, f"K = {int(np.asarray(k).reshape(-1)[0])} exceeds TensorRT's TopK limit of {TENSORRT_MAX_TOPK}"))
        for index in SHAPE_INPUTS.get(op, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in shape_like:
                if op == "TopK":
                    continue  # reported above
                findings.append(Finding("warning", name, op, f"shape input {node.input[index]!r} is computed from tensor values, "
                                                             "not from shapes and constants: a data-dependent shape tensor"))
    if tensorrt_version and Version(tensorrt_version) < Version("10"):
        for value in [*model.graph.input, *model.graph.output]:
            if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
                findings.append(Finding("warning", value.name, "graph I/O", f"INT64 I/O: TensorRT {tensorrt_version} casts INT64 down to INT32"))
    return findings


def check(model: onnx.ModelProto, graph: str, runtime: str, tensorrt_version: str | None = None) -> list[Finding]:
    """Lint; raise :class:`LintError` if any finding is an error, return the warnings otherwise."""
    findings = lint(model, runtime, tensorrt_version)
    if any(f.severity == "error" for f in findings):
        raise LintError(graph, runtime, findings)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glueforge.lint", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runtime", choices=("tensorrt", "tensorrt_rtx"), default="tensorrt")
    parser.add_argument("--tensorrt-version")
    args = parser.parse_args(argv)
    findings = lint(onnx.load(str(args.model), load_external_data=False), args.runtime, args.tensorrt_version)
    for finding in findings:
        print(finding)
    return 1 if any(f.severity == "error" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
