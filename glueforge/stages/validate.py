"""validate: run the engine through its runtime's runner and judge it against the target.

The comparison and the task metrics are ``validation/validate.py``; the runner is the target
runtime module's (what it actually runs is its ``measured_with``, recorded in the report). A
failure raises :class:`ValidationFailed` naming every failed check and stops the bundle. A pass
then runs the homography gate (``glueforge.validation.validate.homography``: the engine's AUC@3px on seeded
warps of photographs against the upstream model's, within the target's margin; an adaptive-depth
bundle matches through its exit rule there, and its layers used per validation pair are recorded), and records the
bundle's sample (``sample.npz``): the validation pair and what the runtime API returns on it,
which ``glueforge infer --self-test`` compares with on the machine that runs it.
Code identity: this module, ``validation`` and the target's runtime module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from glueforge import registry
from glueforge.api import Bundle, run_spec
from glueforge.runtime import PolygraphyGraph
from glueforge.schema import ExtractorSpec, MatcherSpec, TargetSpec
from glueforge.stages import Job, Label, Services, Stage, tool_versions
from glueforge.validation.images import default_images
from glueforge.validation.validate import ValidationFailed, adaptive_depth, homography, validate

SAMPLE = "sample.npz"


@dataclass(frozen=True)
class ValidateView:
    model: str
    version: str
    target_name: str
    target: TargetSpec  # its validate view: everything but description and benchmark
    graphs: tuple[str, ...]
    extractor: ExtractorSpec
    matcher: Optional[MatcherSpec]
    keypoints: int
    image_size: tuple[int, int]  # the sample's


class Validate(Stage):
    name = "validate"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "interface", "reference")  # the reference holds the inputs, golden and reference outputs

    def modules(self, job: Job, graph: str | None) -> list[str]:
        dense = [registry.family(job.spec.extractor.family).__name__] if job.spec.extractor.dense else []
        return [__name__, job.runtime.__name__, *dense]  # a dense extractor's decode is the family's

    def view(self, services: Services, job: Job, graph: str | None) -> ValidateView:
        s = job.settings
        return ValidateView(job.model, services.version(job.model), job.target, job.target_spec.view("validate"),
                            tuple(s.graphs), s.extractor, s.matcher, s.keypoints, tuple(s.image_size))

    def tools(self, job: Job) -> dict[str, Any]:
        return {**tool_versions("polygraphy", "numpy"), **job.runtime.versions()}

    def build(self, services: Services, view: ValidateView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        runtime = registry.runtime(view.target.runtime)
        engine = inputs["engine"].path
        runners = {g: (lambda name, g=g: runtime.runner(engine, g, name)) for g in view.graphs}
        x, k = view.extractor, view.keypoints
        decode = (lambda outputs: registry.family(x.family).decode(x, outputs, k)) if x.dense else None
        reference = inputs["reference"].path
        report = validate(runners, reference, view.target_name, view.target, decode,
                          view.matcher.exit_rule if view.matcher is not None else None)
        report["measured_with"] = runtime.measured_with
        if not report["passed"]:
            failed = {f"{g}@{size}": {**{k: v for k, v in r["checks"].items() if not v},
                                      **{k: v for k, v in r["outputs"].items() if not v["passed"]}}
                      for g, per_graph in report["graphs"].items() for size, r in per_graph["sizes"].items()
                      if not r["passed"]}
            raise ValidationFailed(f"{view.model} on {view.target_name}: validation failed: {json.dumps(failed, default=str)}")
        with self.sample_bundle(view, inputs) as bundle:
            report["homography"] = h = homography(bundle, reference, view.target)
            if not h["passed"]:
                raise ValidationFailed(f"{view.model} on {view.target_name}: the homography gate failed: engine AUC@3px "
                                       f"{h['engine']['auc@3px']:.3f} < reference {h['reference']['auc@3px']:.3f} - "
                                       f"margin {h['margin']:g} ({h['warps']} warps; {h['estimator']})")
            if bundle.exit_rule is not None:
                report["adaptive_depth"] = adaptive_depth(bundle, reference)
            sample = record_sample(bundle, view)
        (out / "validation.json").write_text(json.dumps(report, indent=1))
        np.savez_compressed(out / SAMPLE, **sample)
        return {"passed": True}

    @staticmethod
    def sample_bundle(view: ValidateView, inputs: Mapping[str, Any]) -> Bundle:
        """The engine as the runtime API runs it, through the runner validation used (``measured_with``)."""
        runtime = registry.runtime(view.target.runtime)
        engine = inputs["engine"]
        io = json.loads(inputs["interface"].file("io.json").read_text())
        spec = run_spec(io, engine.meta, view.extractor, view.matcher, model=view.model, version=view.version,
                        target=view.target_name)
        return Bundle(engine.path, spec, runners=lambda g: PolygraphyGraph(runtime.runner(engine.path, g, f"sample:{g}")))


def record_sample(bundle: Bundle, view: ValidateView) -> dict[str, np.ndarray]:
    """``sample.npz``: the validation pair as a caller passes it (uint8, the family's colour, the export's image
    size) and what the runtime API returned on it: per image ``keypoints<i>``, ``scores<i>``, ``descriptors<i>``
    where returned; with a matcher, ``matches`` and ``mscores`` of ``match_pair`` (and ``layers``, the matcher layers
    that ran: all of them at fixed depth, fewer where adaptive depth stopped early; where the manifest says)."""
    images = default_images(view.image_size, view.extractor.colour)
    sample: dict[str, np.ndarray] = {"image0": images[0], "image1": images[1]}
    if bundle.has_matcher:
        pair = bundle.match_pair(images[0], images[1])
        features = [pair.features0, pair.features1]
        sample["matches"], sample["mscores"] = pair.matches, pair.scores
        if pair.layers is not None:  # the layers that ran (the manifest states the matcher's depth)
            sample["layers"] = np.asarray(pair.layers)
    else:
        features = bundle.extract(images)
    for i, f in enumerate(features):
        sample[f"keypoints{i}"] = f.keypoints
        for name in ("scores", "descriptors"):
            if getattr(f, name) is not None:
                sample[f"{name}{i}"] = getattr(f, name)
    return sample
