"""benchmark: time the engine where the target's runtime runs on this machine, for the manifest.

Runs ``glueforge.bench`` through the runtime API on the bundle's sample (its validation pair)
with the target's ``benchmark`` settings, and records the figures with the machine that
measured them. Where the runtime cannot run here (TensorRT-RTX without an RTX GPU, TensorRT off
the Jetson), it records why and the exact command the device runs instead; the field is never
empty without a reason. Code identity: this module (with ``glueforge.bench`` and
``glueforge.api``) and the target's runtime module.

Timings vary from run to run; the result is cached by its action key like every stage's, so a
second build keeps the first measurement (and says where it was taken) rather than replacing a
published bundle's bytes. Whether the runtime runs here is part of the key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from glueforge.api import Bundle, run_spec
from glueforge.bench import Budget, bench, floor_rate, report
from glueforge import registry
from glueforge.schema import BenchmarkSettings, ExtractorSpec, MatcherSpec, TargetSpec
from glueforge.stages import Job, Label, Services, Stage
from glueforge.validation.images import default_images

log = logging.getLogger(__name__)
BENCHMARKS = "benchmarks.json"


def device_command(benchmark: BenchmarkSettings) -> str:
    graphs = f" --graphs {','.join(benchmark.graphs)}" if benchmark.graphs else ""
    graphs += " --frame" if benchmark.frame else ""
    return (f"glueforge bench <bundle directory>{graphs} --batch {','.join(map(str, benchmark.batch))} --warmup 10 "
            "--seconds 20 --json --out benchmarks.json")


@dataclass(frozen=True)
class BenchmarkView:
    model: str
    version: str
    target_name: str
    target: TargetSpec  # its benchmark view: everything but description, tolerances and thresholds
    extractor: ExtractorSpec
    matcher: Optional[MatcherSpec]
    image_size: tuple[int, int]  # of the sample images, when unvalidated


class Benchmark(Stage):
    name = "benchmark"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "interface") if unvalidated else ("engine", "interface", "validate")

    def modules(self, job: Job, graph: str | None) -> list[str]:
        return [__name__, job.runtime.__name__]

    def view(self, services: Services, job: Job, graph: str | None) -> BenchmarkView:
        s = job.settings
        return BenchmarkView(job.model, services.version(job.model), job.target, job.target_spec.view("benchmark"),
                             s.extractor, s.matcher, tuple(s.image_size))

    def tools(self, job: Job) -> dict[str, Any]:
        return {"runs_here": job.runtime.runs_here(job.target_spec) is None, **job.runtime.versions()}

    def build(self, services: Services, view: BenchmarkView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        runtime = registry.runtime(view.target.runtime)
        b = view.target.benchmark
        reason = runtime.runs_here(view.target)
        if reason is not None:
            record = {"status": "not measured", "reason": f"not measured where it was built: {reason}",
                      "command": device_command(b)}
            log.info("benchmark %s: %s", label, record["reason"])
        else:
            engine = inputs["engine"]
            io = json.loads(inputs["interface"].file("io.json").read_text())
            spec = run_spec(io, engine.meta, view.extractor, view.matcher, model=view.model, version=view.version,
                            target=view.target_name)
            budget = Budget(warmup=b.warmup, runs=b.runs, seconds=b.seconds)
            with Bundle(engine.path, spec) as bundle:
                rate = floor_rate(bundle)
                rows = bench(bundle, b.graphs, b.batch, budget, sample_images(view, inputs), rate=rate, frame=b.frame)
                record = report(bundle, rows, budget, rate=rate)
            record["command"] = device_command(b)
        (out / BENCHMARKS).write_text(json.dumps(record, indent=1))
        return {"status": record["status"]}


def sample_images(view: BenchmarkView, inputs: Mapping[str, Any]) -> list[np.ndarray]:
    """The validation pair the validate stage recorded in its sample, else (unvalidated) the same images anew."""
    if "validate" in inputs:
        with np.load(inputs["validate"].file("sample.npz")) as sample:
            return [sample["image0"], sample["image1"]]
    return default_images(view.image_size, view.extractor.colour)
