"""Benchmark: latency of each model's widest graph on CPU runtimes, in one run.

    python benchmarks/runtime_latency.py [--targets cpu,openvino] [--threads 2] [--repeats 20] [--models ...]

For every model and target it takes the engine the build made (building the stages it
needs), runs its ``end2end`` graph (one pair of images at the export size in, keypoints and
matches out), or the ``extractor`` graph of an extractor-only model (the same two images),
through the target runtime's own runner with the recorded settings, the thread count pinned
to ``--threads``, on the validation pair. Runs are interleaved across targets so that drift
of the machine hits all alike; the median of ``--repeats`` runs after 3 warm-ups is printed.
Nothing is asserted about speed here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from glueforge import registry
from glueforge.log import configure_logging
from glueforge.pipeline import Pipeline
from runtimes import onnxruntime, openvino
from validation.validate import cases

# Where each runtime records its thread count in an engine directory (its settings file, a setter).
THREADS = {
    onnxruntime.NAME: (onnxruntime.SESSION, lambda settings, n: settings.update(intra_op_num_threads=n)),
    openvino.NAME: (openvino.PROPERTIES, lambda settings, n: settings["properties"].update(INFERENCE_NUM_THREADS=n)),
}


def with_threads(engine_dir: Path, runtime: str, threads: int, scratch: Path) -> Path:
    """A copy of an engine directory (files linked) whose recorded settings use ``threads`` threads."""
    if runtime not in THREADS:
        raise SystemExit(f"runtime {runtime!r} has no thread setting known to this benchmark; known: {', '.join(THREADS)}")
    name, setter = THREADS[runtime]
    out = scratch / f"{engine_dir.name}-{threads}"
    shutil.copytree(engine_dir, out, copy_function=os.symlink)
    settings = json.loads((engine_dir / name).read_text())
    setter(settings, threads)
    (out / name).unlink()
    (out / name).write_text(json.dumps(settings))
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="cpu,openvino")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default=None)
    args = parser.parse_args()
    configure_logging()
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # no per-inference chatter in the timings' output
    pipeline = Pipeline.load()
    targets = [t.strip() for t in args.targets.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in pipeline.config.select_models(args.models):
            graph = "end2end" if "end2end" in pipeline.config.model(model).graphs else "extractor"
            inputs = np.load(pipeline.result("export", model, targets[0]).file("inputs.npz"))
            size = cases(inputs, graph)[0]
            feed = {"images": inputs[f"{graph}@{size}/images"]}
            runners = []
            for target in targets:
                runtime = pipeline.config.target(target).runtime
                engine = with_threads(pipeline.result("engine", model, target).path, runtime, args.threads, Path(scratch))
                runners.append(registry.runtime(runtime).runner(engine, graph, f"{target}:{model}"))
            for r in runners:
                r.activate()
            try:
                samples: list[list[float]] = [[] for _ in runners]
                for _ in range(3):
                    for r in runners:
                        r.infer(feed)
                for _ in range(args.repeats):
                    for r, times in zip(runners, samples):
                        start = time.perf_counter()
                        r.infer(feed)
                        times.append((time.perf_counter() - start) * 1000)
            finally:
                for r in runners:
                    r.deactivate()
            rows.append((model, graph, size, [statistics.median(t) for t in samples]))
    print(f"\nlatency per image pair (2 images in), {args.threads} threads, "
          f"median of {args.repeats} interleaved runs; {cpu_name()}, {os.cpu_count()} logical CPUs")
    print(f"{'model':20s} {'graph':9s} {'H x W':>9s} " + " ".join(f"{t + ' ms':>13s}" for t in targets) +
          ("" if len(targets) < 2 else f" {targets[1] + ' / ' + targets[0]:>18s}"))
    for model, graph, size, ms in rows:
        ratio = "" if len(ms) < 2 else f" {ms[1] / ms[0]:17.2f}x"
        print(f"{model:20s} {graph:9s} {size:>9s} " + " ".join(f"{v:13.1f}" for v in ms) + ratio)


if __name__ == "__main__":
    main()
