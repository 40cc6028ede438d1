"""Benchmark: fused (com.microsoft.MultiHeadAttention) versus unfused attention on the CPU.

    python benchmarks/attention_fusion.py [--repeats 10] [--models aliked_lightglue,disk_lightglue]

For each model of the ``cpu`` target with a matcher it times the simplified (unfused) and the
fused graphs with the target's onnxruntime session settings on the validation inputs (at the
export's image size), and checks that
the outputs agree (same matches, mscores within 1e-4). Builds the stages it needs.
Prints a table; nothing is asserted about speed here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from glueforge.log import configure_logging
from runtimes.onnxruntime import session as ort_session
from glueforge.pipeline import Pipeline
from validation.validate import cases


def time_sessions(sessions, feed, repeats: int) -> tuple[list[float], list[list[np.ndarray]]]:
    """Median milliseconds of each session, runs interleaved so that machine drift hits all alike."""
    outputs = [s.run(None, feed) for s in sessions]  # warm-up
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for session, times in zip(sessions, samples):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    return [statistics.median(t) * 1000 for t in samples], outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default=None)
    parser.add_argument("--target", default="cpu")
    args = parser.parse_args()
    configure_logging()
    pipeline = Pipeline.load()
    target = pipeline.config.target(args.target)
    rows = []
    for model in pipeline.config.select_models(args.models):
        graphs = [g for g in ("matcher", "end2end") if g in pipeline.config.model(model).graphs]
        if not graphs:
            continue  # an extractor-only model has no attention
        inputs = np.load(pipeline.result("export", model, args.target).file("inputs.npz"))
        unfused, fused = (pipeline.result(s, model, args.target) for s in ("simplify", "fuse"))
        for graph in graphs:
            case = f"{graph}@{cases(inputs, graph)[0]}/"
            feed = {k[len(case):]: inputs[k] for k in inputs.files if k.startswith(case)}
            sessions = [ort_session(r.file(f"{graph}.onnx"), target.session) for r in (unfused, fused)]
            (base_ms, fused_ms), (base, out) = time_sessions(sessions, feed, args.repeats)
            same = np.array_equal(base[-2], out[-2])
            drift = float(np.abs(base[-1] - out[-1]).max()) if same else float("nan")
            rows.append((model, graph, fused.meta[graph]["attention_fused"], base_ms, fused_ms, base_ms / fused_ms, same, drift))
    print(f"\nattention fusion on {args.target} (onnxruntime, median of {args.repeats} interleaved runs, validation pair)")
    print(f"{'model':18s} {'graph':9s} {'fused':>5s} {'unfused ms':>11s} {'fused ms':>9s} {'speedup':>8s} {'same matches':>13s} {'max |d mscore|':>15s}")
    for model, graph, n, base_ms, fused_ms, speedup, same, drift in rows:
        print(f"{model:18s} {graph:9s} {n:5d} {base_ms:11.1f} {fused_ms:9.1f} {speedup:7.2f}x {str(same):>13s} {drift:15.2e}")


if __name__ == "__main__":
    main()
