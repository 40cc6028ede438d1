"""Pre-build lint of an ONNX graph against a runtime's parser; runs on any machine.

Catches, before the device, what otherwise only fails in the engine build there. What a
parser accepts is the runtime module's knowledge (its ``lint_rules``); the checks are here:

- ops in a non-standard domain (fused onnxruntime-only ops and other custom ops);
- ops the runtime's parser does not import, and ops it refuses or warns about by name;
- TopK with K above the runtime's limit, or with K not known when the engine is built;
- INT64 and shape-tensor hazards: int64 graph I/O where the runtime casts it down, and
  shape inputs (Reshape, Expand, Tile, ConstantOfShape, Range, Resize sizes, TopK K)
  computed from tensor values instead of from shapes and constants, which the builder must
  then treat as data-dependent shape tensors.

Each finding names the node and its op.

    python -m glueforge.lint graph.onnx --runtime tensorrt [--version 10.3]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from glueforge import GlueforgeError

STANDARD_DOMAINS = ("", "ai.onnx")
# input index of a shape-like operand, per op
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
                "Resize": (3,), "TopK": (1,)}
SHAPE_OPS = {"Shape", "Size", "Constant", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Add", "Sub",
             "Mul", "Div", "Reshape", "Identity", "Max", "Min", "Floor", "Ceil", "Equal", "Where", "ConstantOfShape",
             "ReduceProd", "Neg"}


@dataclass(frozen=True)
class Rules:
    """What one runtime's ONNX parser accepts."""

    parser: str  # named in messages, e.g. "TensorRT's ONNX parser"
    supported_ops: frozenset[str]
    refused: Mapping[str, str] = field(default_factory=dict)  # op -> why it is an error
    warned: Mapping[str, str] = field(default_factory=dict)  # op -> why it is a warning
    max_topk: Optional[int] = None
    int64_io: Optional[str] = None  # why INT64 graph I/O is a hazard, if it is one

@dataclass(frozen=True)
class Finding:
    severity: str  # "error" refuses the build, "warning" is reported
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: node {self.node!r} ({self.op}): {self.message}"


class LintError(GlueforgeError):
    """A graph has ops or shapes the target runtime's parser refuses."""

    def __init__(self, graph: str, rules: Rules, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__(f"{graph}: {len(errors)} problem(s) for {rules.parser}:\n" + "\n".join(f"  {f}" for f in errors))


def _constants(model) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _shape_like(model, constants: dict[str, Any]) -> set[str]:
    """Tensors computed only from shapes and constants (TensorRT's build-time shape tensors)."""
    known = set(constants)
    for node in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type in ("Shape", "Size") or (
            node.op_type in SHAPE_OPS and all(i in known for i in node.input if i)
        ):
            known.update(node.output)
    return known


def lint(model, rules: Rules) -> list[Finding]:
    """Findings of ``model`` (an ``onnx.ModelProto``) against ``rules``."""
    import numpy as np
    import onnx

    findings: list[Finding] = []
    constants = _constants(model)
    shape_like = _shape_like(model, constants)
    for node in model.graph.node:
        name, op = node.name or node.output[0], node.op_type
        if node.domain not in STANDARD_DOMAINS:
            findings.append(Finding("error", name, f"{node.domain}.{op}",
                                    f"op of domain {node.domain!r} (onnxruntime-only or custom); {rules.parser} has no importer for it"))
            continue
        if op not in rules.supported_ops:
            findings.append(Finding("error", name, op, f"not supported by {rules.parser}"))
        if op in rules.refused:
            findings.append(Finding("error", name, op, rules.refused[op]))
        elif op in rules.warned:
            findings.append(Finding("warning", name, op, rules.warned[op]))
        if op == "TopK":
            k = constants.get(node.input[1])
            if k is None:
                findings.append(Finding("error", name, op, "K is computed at run time; the builder needs K known when the engine is built"))
            elif rules.max_topk is not None and int(np.asarray(k).reshape(-1)[0]) > rules.max_topk:
                findings.append(Finding("error", name, op, f"K = {int(np.asarray(k).reshape(-1)[0])} exceeds the TopK limit of "
                                                           f"{rules.max_topk} of {rules.parser}"))
        for index in SHAPE_INPUTS.get(op, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in shape_like:
                if op == "TopK":
                    continue  # reported above
                findings.append(Finding("warning", name, op, f"shape input {node.input[index]!r} is computed from tensor values, "
                                                             "not from shapes and constants: a data-dependent shape tensor"))
    if rules.int64_io:
        for value in [*model.graph.input, *model.graph.output]:
            if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
                findings.append(Finding("warning", value.name, "graph I/O", rules.int64_io))
    return findings


def check(model, graph: str, rules: Rules) -> list[Finding]:
    """Lint; raise :class:`LintError` if any finding is an error, return the warnings otherwise."""
    findings = lint(model, rules)
    if any(f.severity == "error" for f in findings):
        raise LintError(graph, rules, findings)
    return findings


def rules_of(runtime: str, version: Optional[str] = None) -> Rules:
    """The lint rules of a runtime module (``lint_rules(version)``)."""
    from glueforge import registry

    module = registry.runtime(runtime)
    if not hasattr(module, "lint_rules"):
        raise GlueforgeError(f"runtime {runtime!r} has no pre-build lint")
    return module.lint_rules(version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glueforge.lint", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runtime", required=True, help="a runtime with a pre-build lint, e.g. tensorrt")
    parser.add_argument("--version", help="the runtime release the engine is built with, e.g. 10.3")
    args = parser.parse_args(argv)
    try:
        rules = rules_of(args.runtime, args.version)
    except GlueforgeError as e:
        print(f"glueforge: {e}", file=sys.stderr)
        return 2
    import onnx

    findings = lint(onnx.load(str(args.model), load_external_data=False), rules)
    for finding in findings:
        print(finding)
    return 1 if any(f.severity == "error" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
