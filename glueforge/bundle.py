"""bundle: engine files + I/O spec + validation report -> a bundle directory with manifest.json.

The manifest is written last, after every file it lists has been hashed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from glueforge.cache import describe_files
from glueforge.store import MANIFEST

MANIFEST_SCHEMA = 1


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
        raise ValueError("refusing to bundle an engine whose validation did not pass")
    for name in engine_files:
        shutil.copyfile(engine_dir / name, out / name)
    (out / "io.json").write_text(json.dumps(io_spec, indent=1))
    (out / "validation.json").write_text(json.dumps(validation, indent=1))
    manifest = {
        "schema": MANIFEST_SCHEMA,
        **identity,
        "runtime": runtime,
        "graphs": {
            name: {"file": f"{name}.onnx", **spec} for name, spec in io_spec["graphs"].items()
        },
        "preprocessing": io_spec["preprocessing"],
        "files": describe_files(out),
        "provenance": provenance,
        "validation": {
            "status": "unvalidated" if unvalidated else "passed",
            "reason": validation.get("reason"),
            "measured_on": validation["measured_on"],
            "measured_with": validation.get("measured_with"),
            "thresholds": validation["thresholds"],
            "graphs": {g: {"metrics": r["metrics"], "outputs": r["outputs"]} for g, r in validation["graphs"].items()},
        },
        "benchmarks": None,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest
