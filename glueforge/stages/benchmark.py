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
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glueforge.api import Bundle, run_spec
from glueforge.bench import Budget, bench, report
from glueforge.cache import Result
from glueforge.stages import Job, Services, Stage
from validation.images import default_images

log = logging.getLogger(__name__)
BENCHMARKS = "benchmarks.json"


def device_command(job: Job) -> str:
    b = job.target_spec.benchmark
    graphs = f" --graphs {','.join(b.graphs)}" if b.graphs else ""
    return (f"glueforge bench <bundle directory>{graphs} --batch {','.join(map(str, b.batch))} --warmup 10 "
            "--seconds 20 --json --out benchmarks.json")


class Benchmark(Stage):
    name = "benchmark"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "export") if unvalidated else ("engine", "export", "validate")

    def modules(self, job: Job) -> list[str]:
        return [__name__, job.runtime.__name__]

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"benchmark": job.target_spec.benchmark.model_dump(mode="json"),
                "runs_here": job.runtime.runs_here(job.target_spec) is None, "tools": job.runtime.versions()}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        reason = job.runtime.runs_here(job.target_spec)
        if reason is not None:
            record = {"status": "not measured", "reason": f"not measured where it was built: {reason}",
                      "command": device_command(job)}
            log.info("benchmark %s for %s: %s", job.model, job.target, record["reason"])
        else:
            engine = inputs["engine"]
            io = json.loads(inputs["export"].file("io.json").read_text())
            spec = run_spec(io, engine.meta, job.settings.extractor, job.settings.matcher, model=job.model,
                            version=services.version(job.model), target=job.target)
            b = job.target_spec.benchmark
            budget = Budget(warmup=b.warmup, runs=b.runs, seconds=b.seconds)
            with Bundle(engine.path, spec) as bundle:
                rows = bench(bundle, b.graphs, b.batch, budget, sample_images(job, inputs))
                record = report(bundle, rows, budget)
            record["command"] = device_command(job)
        (out / BENCHMARKS).write_text(json.dumps(record, indent=1))
        return {"status": record["status"]}


def sample_images(job: Job, inputs: Mapping[str, Result]) -> list[np.ndarray]:
    """The validation pair the validate stage recorded in its sample, else (unvalidated) the same images anew."""
    if "validate" in inputs:
        with np.load(inputs["validate"].file("sample.npz")) as sample:
            return [sample["image0"], sample["image1"]]
    return default_images(job.settings.image_size, job.settings.extractor.colour)
