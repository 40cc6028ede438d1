"""Benchmark: where the time of one ONNX graph goes on onnxruntime's CPU provider, per operator type.

    python benchmarks/op_profile.py GRAPH.onnx [GRAPH2.onnx ...] [--threads 1] [--runs 5] [--size 480 640]

Each graph is fed the validation pair's first image (or both, for a graph that takes pairs) at
``--size``; after two warm-ups, ``--runs`` profiled runs are summed by operator type (the kernel
times of onnxruntime's profiler, divided by the runs). Graphs given together are run side by side
in one process, interleaved, so they can be compared (before and after a rewrite). Nothing is
asserted about speed here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from glueforge.validation.images import load, shared_pairs

# ../shared/data beside the checkout, or $GLUEFORGE_SHARED_DATA (as the tests)
DATA = Path(os.environ.get("GLUEFORGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _session(path: Path, threads: int, profile_dir: str | None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / Path(path).stem)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(session, size: tuple[int, int]) -> dict[str, np.ndarray]:
    _, a, b = next(iter(shared_pairs(DATA)))
    [image] = session.get_inputs()
    batch = 2 if isinstance(image.shape[0], str) and image.shape[0].startswith("2") else 1
    images = np.stack([load(p, size, "RGB") for p in (a, b)][:batch])
    return {image.name: images.astype(np.float32)}


def _by_op(profile: Path, runs: int) -> dict[str, tuple[float, int]]:
    events = json.loads(profile.read_text())
    total: dict[str, float] = collections.defaultdict(float)
    nodes: dict[str, set] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            total[op] += e["dur"] / 1000
            nodes[op].add(e["name"])
    return {op: (ms / runs, len(nodes[op])) for op, ms in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    args = parser.parse_args()
    size = tuple(args.size)

    timings: dict[Path, list[float]] = {g: [] for g in args.graphs}
    plain = {g: _session(g, args.threads, None) for g in args.graphs}
    feeds = {g: _feed(s, size) for g, s in plain.items()}
    for _ in range(2):
        for g, s in plain.items():
            s.run(None, feeds[g])
    for _ in range(args.runs):  # interleaved: drift of the machine hits every graph alike
        for g, s in plain.items():
            start = time.perf_counter()
            s.run(None, feeds[g])
            timings[g].append((time.perf_counter() - start) * 1000)
    print(f"{'graph':40s} {'median ms':>10s} {'min ms':>8s}   ({args.threads} thread(s), {size[0]}x{size[1]})")
    for g, t in timings.items():
        print(f"{str(g)[-40:]:40s} {statistics.median(t):10.1f} {min(t):8.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        for g in args.graphs:
            session = _session(g, args.threads, tmp)
            session.run(None, feeds[g])
            for _ in range(args.runs):
                session.run(None, feeds[g])
            by_op = _by_op(Path(session.end_profiling()), args.runs + 1)
            print(f"\n{g}: kernel time per run by operator type")
            print(f"{'op':24s} {'ms':>8s} {'share':>7s} {'nodes':>6s}")
            whole = sum(ms for ms, _ in by_op.values())
            for op, (ms, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:14]:
                print(f"{op:24s} {ms:8.1f} {ms / whole:7.1%} {n:6d}")
            print(f"{'all':24s} {whole:8.1f}")


if __name__ == "__main__":
    main()
