"""Benchmark: latency of each model's widest graph on CPU runtimes, and of the upstream model in PyTorch, in one run.

    python benchmarks/runtime_latency.py [--targets cpu,openvino] [--threads 2] [--repeats 20] [--models ...] [--no-eager]
                                         [--pair IMAGE0 IMAGE1]

For every model and target it takes the engine the build made (building the stages it
needs), runs its ``end2end`` graph (one pair of images at the export size in, keypoints and
matches out), or the ``extractor`` graph of an extractor-only model (the same two images),
through the target runtime's own runner with the recorded settings, the thread count pinned
to ``--threads``, on the validation pair (or ``--pair``'s photographs). Beside them it runs the family's unpatched upstream
model (kornia, eager PyTorch on ``--threads`` threads: both images' features, then the matcher)
on the same pair: "x eager" is a target's latency over that one's. Runs are interleaved so that
drift of the machine hits all alike; the median of ``--repeats`` runs after 3 warm-ups is printed.
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
import torch

from glueforge import registry
from glueforge.graphs import Models
from glueforge.validation.images import load
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


def eager(pipeline: Pipeline, model: str, target: str):
    """The upstream model of ``model`` (its export settings for ``target``: the same K) as one callable on a pair."""
    weights = {role: pipeline.weight_file(name) for role, name in pipeline.weight_names(model).items()}
    models = Models(pipeline.config.export_settings(model, target), weights)

    def run(images: np.ndarray) -> None:
        with torch.inference_mode():
            features = models.reference_features(torch.from_numpy(images))
        if models.spec.matcher is not None:
            models.reference_matches(features[0], features[1])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="cpu,openvino")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default=None)
    parser.add_argument("--no-eager", dest="eager", action="store_false", help="without the upstream PyTorch model")
    parser.add_argument("--pair", nargs=2, type=Path, metavar=("IMAGE0", "IMAGE1"),
                        help="these photographs (resized to the export size) instead of the validation pair")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_logging()
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # no per-inference chatter in the timings' output
    pipeline = Pipeline.load()
    targets = [t.strip() for t in args.targets.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in pipeline.config.select_models(args.models):
            graph = "end2end" if "end2end" in pipeline.config.model(model).graphs else "extractor"
            inputs = np.load(pipeline.result("reference", model, targets[0]).file("inputs.npz"))
            size = cases(inputs, graph)[0]
            feed = {"images": inputs[f"{graph}@{size}/images"]}
            if args.pair:
                h, w = (int(v) for v in size.split("x"))
                colour = pipeline.config.export_settings(model, targets[0]).extractor.colour
                feed = {"images": np.stack([load(p, (h, w), colour) for p in args.pair]).astype(np.float32)}
            runs = [(lambda run: lambda: run(feed["images"]))(eager(pipeline, model, targets[0]))] if args.eager else []
            runners = []
            for target in targets:
                runtime = pipeline.config.target(target).runtime
                engine = with_threads(pipeline.result("engine", model, target).path, runtime, args.threads, Path(scratch))
                runners.append(registry.runtime(runtime).runner(engine, graph, f"{target}:{model}"))
            for r in runners:
                r.activate()
            try:
                runs = [(lambda r: lambda: r.infer(feed))(r) for r in runners] + runs
                samples: list[list[float]] = [[] for _ in runs]
                for _ in range(3):
                    for run in runs:
                        run()
                for _ in range(args.repeats):
                    for run, times in zip(runs, samples):
                        start = time.perf_counter()
                        run()
                        times.append((time.perf_counter() - start) * 1000)
            finally:
                for r in runners:
                    r.deactivate()
            rows.append((model, graph, size, [statistics.median(t) for t in samples]))
    print(f"\nlatency per image pair (2 images in), {args.threads} threads, "
          f"median of {args.repeats} interleaved runs; {cpu_name()}, {os.cpu_count()} logical CPUs")
    print(f"{'model':20s} {'graph':9s} {'H x W':>9s} " + " ".join(f"{t + ' ms':>13s}" for t in targets) +
          (f" {'eager ms':>10s} " + " ".join(f"{t + ' x eager':>16s}" for t in targets) if args.eager else ""))
    for model, graph, size, ms in rows:
        line = f"{model:20s} {graph:9s} {size:>9s} " + " ".join(f"{v:13.1f}" for v in ms[:len(targets)])
        if args.eager:
            line += f" {ms[-1]:10.1f} " + " ".join(f"{v / ms[-1]:15.2f}x" for v in ms[:len(targets)])
        print(line)

if __name__ == "__main__":
    main()
