"""The floor of a graph: the time its arithmetic would take at the machine's own matrix-multiply rate.

- **FLOPs** are counted once, at export (``count``), on the traced module and its trace example
  (the export's optimum size and K), with torch's FLOP counter: a multiply-add is 2 FLOPs, and the
  ops counted are the arithmetic ones (convolutions, matrix products, einsum, attention);
  elementwise ops, sampling and top-k count nothing. They go into the export's ``io.json``
  (``flops``), and so into the manifest's ``graphs``, per unit of the graph's batch (an image for
  the extractor, a pair for end2end and the matcher).
- **The rate** is measured at bench time, in the same run as the graphs, by the bundle's runtime
  (``matmul_rate`` of a runtime module) with the bundle's own session or compile settings: a
  ``MatMul`` of two fp32 N x N matrices (:func:`matmul_model`), whose median time gives
  GFLOP/s. A runtime whose engines run on a GPU measures nothing here (no floor column).
- **x floor** is the graph's median latency over that floor: 1.0 would be a graph that runs
  only its arithmetic, at the speed of a large matrix product.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

N = 1024  # 2.1 GFLOP per product: long enough to time, short enough for every bench run
MATMUL = "floor_matmul.onnx"


def count(module: Any, example: tuple[Any, ...]) -> int:
    """FLOPs of one forward of ``module`` on ``example`` (torch's FLOP counter; a multiply-add is 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*example)
    return int(counter.get_total_flops())


def matmul_model():
    """``c = a @ b`` on fp32 (N, N) inputs: the product whose rate is the floor's."""
    from onnx import TensorProto, helper

    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, N]) for n in ("a", "b", "c")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "floor", tensors[:2], tensors[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_matmul(directory: Path) -> Path:
    import onnx

    path = Path(directory) / MATMUL
    onnx.save(matmul_model(), str(path))
    return path


def matmul_inputs() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    return {n: generator.standard_normal((N, N), dtype=np.float32) for n in ("a", "b")}


def measure(run: Callable[[], Any], measured_with: str, runs: int = 15, warmup: int = 3) -> dict[str, Any]:
    """The rate of ``run()`` (one product of :func:`matmul_model`): the median of ``runs`` timed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"gflops": round(2 * N**3 / seconds / 1e9, 1), "matmul": f"fp32 {N}x{N} @ {N}x{N}", "runs": runs,
            "measured_with": measured_with}


def graph_flops(spec: Mapping[str, Any], unit_count: int) -> float | None:
    """FLOPs of one call of a graph on ``unit_count`` units (images or pairs), from its manifest entry."""
    flops = spec.get("flops")
    return None if not flops else float(flops["count"]) * unit_count


def times_floor(p50_ms: float, flops: float, gflops: float) -> float:
    """How many times the floor (``flops`` at ``gflops``) the measured median is."""
    return p50_ms / (flops / (gflops * 1e9) * 1000.0)
