"""bundle: engine files + I/O spec + validation + benchmark -> a bundle directory with manifest.json.

Besides the engine files, a bundle holds ``io.json``, ``glueforge.validation.json``, ``sample.npz`` (the
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
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from glueforge import GlueforgeError
from glueforge.api import run_spec
from glueforge.cache import describe_files
from glueforge.licenses import licenses
from glueforge.report import REPORT, bundle_report
from glueforge.schema import ExtractorSpec, MatcherSpec, TargetSpec
from glueforge.stages import Job, Label, Services, Stage
from glueforge.views import payload
from glueforge.store import MANIFEST

log = logging.getLogger(__name__)
MANIFEST_SCHEMA = 2
SAMPLE = "sample.npz"
UNVALIDATED = {"passed": False, "status": "unvalidated", "measured_on": None, "thresholds": None, "graphs": {},
               "reason": "published with the unvalidated=1 override; no engine output was checked"}


@dataclass(frozen=True)
class BundleView:
    model: str
    version: str
    description: Optional[str]  # the model's
    target_name: str
    target: TargetSpec  # its bundle view: everything but its description (the manifest's target_settings)
    extractor: ExtractorSpec
    matcher: Optional[MatcherSpec]
    provenance: dict[str, Any]  # without the git commit, which the build adds
    unvalidated: bool


class Bundle(Stage):
    name = "bundle"

    def needs(self, job: Job, unvalidated: bool) -> tuple[str, ...]:
        return ("engine", "interface", "fuse", "benchmark") + (() if unvalidated else ("validate",))

    def view(self, services: Services, job: Job, graph: str | None) -> BundleView:
        return BundleView(job.model, services.version(job.model), job.spec.description, job.target,
                          job.target_spec.view("bundle"), job.settings.extractor, job.settings.matcher,
                          services.provenance(job, with_commit=False), services.unvalidated)

    def build(self, services: Services, view: BundleView, inputs: Mapping[str, Any], out: Path, label: Label) -> dict[str, Any]:
        engine = inputs["engine"]
        if view.unvalidated:
            log.warning("!" * 72)
            log.warning("UNVALIDATED: %s for %s is bundled WITHOUT validation (unvalidated=1); its manifest says so",
                        view.model, view.target_name)
            log.warning("!" * 72)
            validation = UNVALIDATED
        else:
            validation = json.loads(inputs["validate"].file("validation.json").read_text())
            shutil.copyfile(inputs["validate"].file(SAMPLE), out / SAMPLE)
        provenance = {**view.provenance, "git_commit": services.git_commit()}
        io = json.loads(inputs["interface"].file("io.json").read_text())
        manifest = assemble(
            out,
            identity={"model": view.model, "version": view.version, "target": view.target_name,
                      "description": view.description, "precision": view.target.precision},
            engine_dir=engine.path,
            engine_files=sorted(engine.files),
            io_spec=io,
            validation=validation,
            run=run_spec(io, engine.meta, view.extractor, view.matcher),
            provenance=provenance,
            benchmarks=json.loads(inputs["benchmark"].file("benchmarks.json").read_text()),
            target_settings=payload(view.target),
            prepared=inputs["fuse"].meta,
            reproduce=reproduce(view, provenance.get("git_commit"), engine.meta, provenance.get("overlays", ())),
        )
        return {"manifest": {k: manifest[k] for k in ("model", "version", "target", "files")}}


def reproduce(view: BundleView, commit: str | None, runtime: Mapping[str, Any], overlays: Sequence[str] = ()) -> dict[str, str]:
    """The commands that rebuild this bundle and, from its own files, its engines. ``overlays``: provenance's
    names of the overlays it was built with (paths from the project root; a bare name for one outside it)."""
    checkout = (commit or "<commit>").removesuffix("-dirty")
    what = "the bundle, from the project at its commit" + (" (built with uncommitted changes)" if commit and commit.endswith("-dirty") else "")
    build = f"doit build target={view.target_name} model={view.model}"
    if overlays:
        build += " config=" + ",".join(shlex.quote(o) for o in overlays)
        if any("/" not in o for o in overlays):
            what += "; an overlay named without a directory lay outside the project or at its root: give its path"
    commands = {what: f"git checkout {checkout} && {build}"}
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
        "licenses": licenses(provenance),
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
