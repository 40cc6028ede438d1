"""Static graphs: every input shape fixed at a target's declared size, and no shape arithmetic left.

Our exports keep the batch and the image size dynamic (``N``, ``2B``, ``H``, ``W``), so a graph carries
the arithmetic that derives its grids and reshapes from the input shape: Shape, Gather, Unsqueeze,
Concat, Cast, ... on int64 scalars. A GPU provider runs that arithmetic on the host: onnxruntime's CUDA
provider places every node that computes a shape-like input of another kernel (a Reshape's shape, a
Slice's starts, a TopK's K, ...) on the CPU, adds copies around it, and then refuses to capture the run
as a CUDA graph. Measured on the H200 (issue 21): 274 of the extractor's 1140 nodes on the CPU, 52 copies.

:func:`fix_shapes` gives each symbolic input dimension its declared value and lets onnxsim fold what
becomes constant; :func:`shape_findings` says what is still not static: an input or output dimension
that is not a number, a node that reads the shape of a tensor, or a shape-like input (the table
``SHAPE_INPUTS``) that is computed rather than a constant. A graph with no findings has nothing the
CUDA provider would place on the CPU for being shape arithmetic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Mapping

import onnx

log = logging.getLogger(__name__)


class StaticShapeError(ValueError):
    """A graph that cannot be made static at the declared size."""


# The inputs that onnxruntime's CUDA kernels declare as host memory (OrtMemTypeCPUInput in their kernel registrations):
# a computed tensor there pulls the node that makes it, and its own inputs back to a graph input, onto the CPU
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "TopK": (1,), "Resize": (1, 2, 3),
    "Upsample": (1,), "Pad": (1, 2, 3), "Squeeze": (1,), "Unsqueeze": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "OneHot": (1,), "Split": (1,), "CumSum": (1,), "Trilu": (1,), "ReduceSum": (1,), "ReduceMean": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL2": (1,), "ReduceL1": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "NonMaxSuppression": (2, 3, 4),
}
SHAPE_READERS = ("Shape", "Size")  # nodes whose output is the shape, not the values, of their input


def symbolic_inputs(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input's dimensions: an int where fixed, the dimension's name where symbolic."""
    return {i.name: [d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def static_shapes(model: onnx.ModelProto, values: Mapping[str, int]) -> dict[str, list[int]]:
    """Each input's shape with its symbolic dimensions replaced by ``values`` (dimension name -> size)."""
    shapes = {}
    for name, dims in symbolic_inputs(model).items():
        unknown = [d for d in dims if isinstance(d, str) and d not in values]
        if unknown:
            raise StaticShapeError(f"input {name!r} has dimensions {unknown} with no declared size (declared: "
                                   f"{', '.join(f'{k}={v}' for k, v in values.items())})")
        shapes[name] = [values[d] if isinstance(d, str) else int(d) for d in dims]
    return shapes


def fix_shapes(model: onnx.ModelProto, values: Mapping[str, int]) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """``model`` with every input at its declared shape, simplified by onnxsim (which folds the shape arithmetic that
    became constant) and shape-inferred; returns it with the input shapes."""
    import onnxsim

    shapes = static_shapes(model, values)
    with _stderr_captured() as captured:
        fixed, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes, check_n=0)
    skipped = [line for line in captured if line.startswith("WARNING: failed to run")]
    if skipped:  # nodes whose inputs are known only at run time: nothing to fold there, as expected
        log.info("static shapes %s: onnxsim left %d nodes that read run-time values (its 'failed to run' warnings, "
                 "logged at DEBUG)", shapes, len(skipped))
    for line in captured:
        log.debug("onnxsim: %s", line)
    if not ok:
        raise StaticShapeError(f"onnxsim could not simplify the graph at {shapes}")
    fixed = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    return fixed, shapes


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """The process's standard error (file descriptor 2, where onnxsim's C++ core prints) into a list of lines, for
    the block's duration; the lines are there once the block ends, an error's too."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.rstrip("\n") for line in sink)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def shape_findings(model: onnx.ModelProto) -> list[str]:
    """What keeps ``model`` from being static: one line per input or output with a dimension that is not a number,
    per node that reads a tensor's shape, and per computed shape-like input (``SHAPE_INPUTS``). Empty: static."""
    findings = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dims = _dims(value)
            if not dims and not value.type.tensor_type.HasField("shape") or any(not isinstance(d, int) or d <= 0 for d in dims):
                findings.append(f"{kind} {value.name!r} is not static: {dims}")
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        if node.op_type in SHAPE_READERS:
            findings.append(f"{node.op_type} node {node.name!r} reads the shape of {node.input[0]!r}")
        for index in SHAPE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                findings.append(f"{node.op_type} node {node.name!r} computes its input {index} ({node.input[index]!r}) "
                                "at run time: the CUDA provider runs that on the CPU")
    return findings
