"""bundle: engine files + I/O spec + validation + benchmark -> a bundle directory with manifest.json.

Besides the engine files, a bundle holds ``io.json``, ``validation.json``, ``sample.npz`` (the
validation pair and the runtime API's outputs on it, for ``glueforge infer --self-test``) and
``report.html`` (``glueforge.report``). The manifest is written last, after every file it lists
has been hashed. Its ``runtime`` block is what the runtime module's engine build returned (name,
versions, devices, files); ``extractor``, ``matcher``, ``graphs``, ``preprocessing``,
``image_sizes`` and ``keypoints`` are what the runtime API runs the bundle from
(``glueforge.api.run_spec``); ``reproduce`` holds the commands that rebuild it and its engines.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from glueforge import GlueforgeError
from glueforge.api import run_spec
from glueforge.cache import Result, describe_files
from glueforge.report import REPORT, bundle_report
from glueforge.stages import Job, Services, Stage
from glueforge.store import MANIFEST

log = logging.getLogger(__name__)
MANIFEST_SCHEMA = 2
SAMPLE = "sample.npz"
UNVALIDATED = {"passed": False, "status": "unvalidated", "measured_on": None, "thresholds": None, "graphs": {},
               "reason": "published with the unvalidated=1 override; no engine output was checked"}


class Bundle(Stage):
    name = "bundle"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "export", "fuse", "benchmark") + (() if unvalidated else ("validate",))

    def settings(self, services: Services, job: Job) -> dict[str, Any]:
        return {"provenance": services.provenance(job, with_commit=False), "version": services.version(job.model),
                "unvalidated": services.unvalidated, "description": job.spec.description}

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
            shutil.copyfile(inputs["validate"].file(SAMPLE), out / SAMPLE)
        version = services.version(job.model)
        provenance = services.provenance(job, with_commit=True)
        io = json.loads(export.file("io.json").read_text())
        manifest = assemble(
            out,
            identity={"model": job.model, "version": version, "target": job.target, "description": job.spec.description,
                      "precision": job.target_spec.precision},
            engine_dir=engine.path,
            engine_files=sorted(engine.files),
            io_spec=io,
            validation=validation,
            run=run_spec(io, engine.meta, job.settings.extractor, job.settings.matcher),
            provenance=provenance,
            benchmarks=json.loads(inputs["benchmark"].file("benchmarks.json").read_text()),
            target_settings=job.target_spec.model_dump(mode="json", exclude={"description"}),
            prepared=inputs["fuse"].meta,
            reproduce=reproduce(job, version, provenance.get("git_commit"), engine.meta),
        )
        return {"manifest": {k: manifest[k] for k in ("model", "version", "target", "files")}}


def reproduce(job: Job, version: str, commit: str | None, runtime: Mapping[str, Any]) -> dict[str, str]:
    """The commands that rebuild this bundle and, from its own files, its engines."""
    checkout = (commit or "<commit>").removesuffix("-dirty")
    what = "the bundle, from the project at its commit" + (" (built with uncommitted changes)" if commit and commit.endswith("-dirty") else "")
    commands = {what: f"git checkout {checkout} && doit build target={job.target} model={job.model}"}
    for graph, engine in sorted((runtime.get("engines") or {}).items()):
        if engine.get("device_command"):
            commands[f"the {graph} engine on the device, from this bundle's {graph}.onnx"] = engine["device_command"]
    if runtime.get("engines") and not any(e.get("device_command") for e in runtime["engines"].values()):
        commands["the engines on a machine with the runtime, from this bundle's ONNX"] = \
            "glueforge engine <bundle directory> --out <directory>"
    return commands


def assemble(
    out: Path,
    *,
    identity: dict[str, Any],
    engine_dir: Path,
    engine_files: list[str],
    io_spec: dict[str, Any],
    validation: dict[str, Any],
    run: dict[str, Any],
    provenance: dict[str, Any],
    benchmarks: dict[str, Any],
    target_settings: dict[str, Any],
    prepared: dict[str, Any],
    reproduce: dict[str, str],
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
        **run,
        "target_settings": target_settings,
        "prepared": prepared,
        "provenance": provenance,
        "validation": {
            "status": "unvalidated" if unvalidated else "passed",
            "reason": validation.get("reason"),
            "measured_on": validation["measured_on"],
            "measured_with": validation.get("measured_with"),
            "thresholds": validation["thresholds"],
            "homography": validation.get("homography"),
            "graphs": {g: {"metrics": r["metrics"], "sizes": {size: {"metrics": c["metrics"], "outputs": c["outputs"]}
                                                              for size, c in r["sizes"].items()}}
                       for g, r in validation["graphs"].items()},
        },
        "benchmarks": benchmarks,
        "reproduce": reproduce,
        "report": REPORT,
    }
    (out / REPORT).write_text(bundle_report(out, manifest, validation))
    manifest["files"] = describe_files(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest
