"""validate: run the engine through its runtime's runner and judge it against the target.

The comparison and the task metrics are ``validation/validate.py``; the runner is the target
runtime module's (what it actually runs is its ``measured_with``, recorded in the report). A
failure raises :class:`ValidationFailed` naming every failed check and stops the bundle.
Code identity: this module, ``validation`` and the target's runtime module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from glueforge import registry
from glueforge.cache import Result
from glueforge.stages import Job, Services, Stage, tool_versions
from validation.validate import ValidationFailed, validate


class Validate(Stage):
    name = "validate"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "export")  # the export holds the validation inputs, golden and reference outputs

    def modules(self, job: Job) -> list[str]:
        dense = [registry.family(job.spec.extractor.family).__name__] if job.spec.extractor.dense else []
        return [__name__, job.runtime.__name__, *dense]  # a dense extractor's decode is the family's

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"target": job.target_spec.model_dump(mode="json", exclude={"description"}),
                "tools": {**tool_versions("polygraphy", "scipy", "numpy"), **job.runtime.versions()}}

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
        (out / "validation.json").write_text(json.dumps(report, indent=1))
        return {"passed": True}
