"""bundle: engine files + I/O spec + validation report -> a bundle directory with manifest.json.

The manifest is written last, after every file it lists has been hashed. Its ``runtime``
block is what the runtime module's engine build returned (name, versions, devices, files).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from glueforge import GlueforgeError
from glueforge.cache import Result, describe_files
from glueforge.stages import Job, Services, Stage
from glueforge.store import MANIFEST

log = logging.getLogger(__name__)
MANIFEST_SCHEMA = 1
UNVALIDATED = {"passed": False, "status": "unvalidated", "measured_on": None, "thresholds": None, "graphs": {},
               "reason": "published with the unvalidated=1 override; no engine output was checked"}


class Bundle(Stage):
    name = "bundle"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "export") if unvalidated else ("engine", "export", "validate")

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"provenance": services.provenance(job, with_commit=False), "version": services.version(job.model),
                "unvalidated": services.unvalidated}

    def build(self, services: Services, job: Job, inputs: Mapping[str, Result], out: Path) -> dict[str, Any]:
        engine, export = inputs["engine"], inputs["export"]
        if services.unvalidated:
            log.warning("!" * 72)
            log.warning("UNVALIDATED: %s for %s is bundled WITHOUT validation (unvalidated=1); its manifest says so",
                        job.model, job.target)
            log.warning("!" * 72)
            validation = UNVALIDATED
        else:
            validation = json.loads(inputs["validate"].file("validation.json").read_text())
        manifest = assemble(
            out,
            identity={"model": job.model, "version": services.version(job.model), "target": job.target,
                      "precision": job.target_spec.precision, "keypoints": job.settings.keypoints},
            engine_dir=engine.path,
            engine_files=sorted(engine.files),
            io_spec=json.loads(export.file("io.json").read_text()),
            validation=validation,
            runtime=engine.meta,
            provenance=services.provenance(job, with_commit=True),
        )
        return {"manifest": {k: manifest[k] for k in ("model", "version", "target", "files")}}


def assemble(
    out: Path,
    *,
    identity: dict[str, Any],
    engine_dir: Path,
    engine_files: list[str],
    io_spec: dict[str, Any],
    validation: dict[str, Any],
    runtime: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write the bundle into ``out``; return the manifest."""
    unvalidated = validation.get("status") == "unvalidated"
    if not validation.get("passed") and not unvalidated:
        raise GlueforgeError(f"{identity['model']} for {identity['target']}: refusing to bundle an engine whose validation "
                             "did not pass")
    for name in engine_files:
        shutil.copyfile(engine_dir / name, out / name)
    (out / "io.json").write_text(json.dumps(io_spec, indent=1))
    (out / "validation.json").write_text(json.dumps(validation, indent=1))
    manifest = {
        "schema": MANIFEST_SCHEMA,
        **identity,
        "runtime": runtime,
        "graphs": {name: {"file": runtime["files"][name], **spec} for name, spec in io_spec["graphs"].items()},
        "preprocessing": io_spec["preprocessing"],
        "files": describe_files(out),
        "provenance": provenance,
        "validation": {
            "status": "unvalidated" if unvalidated else "passed",
            "reason": validation.get("reason"),
            "measured_on": validation["measured_on"],
            "measured_with": validation.get("measured_with"),
            "thresholds": validation["thresholds"],
            "graphs": {g: {"metrics": r["metrics"], "sizes": {size: {"metrics": c["metrics"], "outputs": c["outputs"]}
                                                              for size, c in r["sizes"].items()}}
                       for g, r in validation["graphs"].items()},
        },
        "benchmarks": None,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest
