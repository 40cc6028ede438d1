"""validate: run the engine through its runtime's runner and judge it against the target.

The comparison and the task metrics are ``validation/validate.py``; the runner is the target
runtime module's (what it actually runs is its ``measured_with``, recorded in the report). A
failure raises :class:`ValidationFailed` naming every failed check and stops the bundle. A pass
then runs the homography gate (``validation.validate.homography``: the engine's AUC@3px on seeded
warps of photographs against the upstream model's, within the target's margin), and records the
bundle's sample (``sample.npz``): the validation pair and what the runtime API returns on it,
which ``glueforge infer --self-test`` compares with on the machine that runs it.
Code identity: this module, ``validation`` and the target's runtime module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glueforge import registry
from glueforge.api import Bundle, run_spec
from glueforge.cache import Result
from glueforge.runtime import PolygraphyGraph
from glueforge.stages import Job, Services, Stage, tool_versions
from validation.images import default_images
from validation.validate import ValidationFailed, homography, validate

SAMPLE = "sample.npz"


class Validate(Stage):
    name = "validate"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "export")  # the export holds the validation inputs, golden and reference outputs

    def modules(self, job: Job) -> list[str]:
        dense = [registry.family(job.spec.extractor.family).__name__] if job.spec.extractor.dense else []
        return [__name__, job.runtime.__name__, *dense]  # a dense extractor's decode is the family's

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"target": job.target_spec.validation_settings(),
                "tools": {**tool_versions("polygraphy", "numpy"), **job.runtime.versions()}}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        engine = inputs["engine"].path
        runners = {g: (lambda name, g=g: job.runtime.runner(engine, g, name)) for g in job.graphs}
        x, k = job.settings.extractor, job.settings.keypoints
        decode = (lambda outputs: registry.family(x.family).decode(x, outputs, k)) if x.dense else None
        report = validate(runners, inputs["export"].path, job.target, job.target_spec, decode)
        report["measured_with"] = job.runtime.measured_with
        if not report["passed"]:
            failed = {f"{g}@{size}": {**{k: v for k, v in r["checks"].items() if not v},
                                      **{k: v for k, v in r["outputs"].items() if not v["passed"]}}
                      for g, per_graph in report["graphs"].items() for size, r in per_graph["sizes"].items()
                      if not r["passed"]}
            raise ValidationFailed(f"{job.model} on {job.target}: validation failed: {json.dumps(failed, default=str)}")
        with self.sample_bundle(services, job, inputs) as bundle:
            report["homography"] = h = homography(bundle, inputs["export"].path, job.target_spec)
            if not h["passed"]:
                raise ValidationFailed(f"{job.model} on {job.target}: the homography gate failed: engine AUC@3px "
                                       f"{h['engine']['auc@3px']:.3f} < reference {h['reference']['auc@3px']:.3f} - "
                                       f"margin {h['margin']:g} ({h['warps']} warps; {h['estimator']})")
            sample = record_sample(bundle, job)
        (out / "validation.json").write_text(json.dumps(report, indent=1))
        np.savez_compressed(out / SAMPLE, **sample)
        return {"passed": True}

    @staticmethod
    def sample_bundle(services: Services, job: Job, inputs: Mapping[str, Result]) -> Bundle:
        """The engine as the runtime API runs it, through the runner validation used (``measured_with``)."""
        engine = inputs["engine"]
        io = json.loads(inputs["export"].file("io.json").read_text())
        spec = run_spec(io, engine.meta, job.settings.extractor, job.settings.matcher, model=job.model,
                        version=services.version(job.model), target=job.target)
        return Bundle(engine.path, spec, runners=lambda g: PolygraphyGraph(job.runtime.runner(engine.path, g, f"sample:{g}")))


def record_sample(bundle: Bundle, job: Job) -> dict[str, np.ndarray]:
    """``sample.npz``: the validation pair as a caller passes it (uint8, the family's colour, the export's image
    size) and what the runtime API returned on it: per image ``keypoints<i>``, ``scores<i>``, ``descriptors<i>``
    where returned; with a matcher, ``matches`` and ``mscores`` of ``match_pair``."""
    images = default_images(job.settings.image_size, job.settings.extractor.colour)
    sample: dict[str, np.ndarray] = {"image0": images[0], "image1": images[1]}
    if bundle.has_matcher:
        pair = bundle.match_pair(images[0], images[1])
        features = [pair.features0, pair.features1]
        sample["matches"], sample["mscores"] = pair.matches, pair.scores
    else:
        features = bundle.extract(images)
    for i, f in enumerate(features):
        sample[f"keypoints{i}"] = f.keypoints
        for name in ("scores", "descriptors"):
            if getattr(f, name) is not None:
                sample[f"{name}{i}"] = getattr(f, name)
    return sample
