"""The hand-off from a laptop to a device: everything before the engine, in one directory.

A Jetson has JetPack's TensorRT but no torch, and often no S3 between it and the laptop. On the laptop,
``doit handoff target=orin_nano dest=DIR`` builds each model's steps up to the fused ONNX (traces, the
interface, the simplified and fused graphs, the references that validation reads) and writes their
results into ``DIR`` in the remote cache's layout (``glueforge.cache.DirectoryCache``), with this
module's two notes: ``handoff.json`` (target, models, commit, the results handed off, the device's
commands) and ``HANDOFF.md`` (the same for a person). On the device, the same commit builds with
``GLUEFORGE_REMOTE_CACHE=DIR``: it computes the same action keys (a tool that is not installed there
counts at its pin: ``glueforge.machine.tool_versions``), takes those steps from ``DIR``, skips the
weights no step left to run reads, and builds the engine, validates, benches and bundles on the device.
The device's overlays (``config=``) and, for weights trusted on first use, models.lock travel in ``DIR``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from glueforge.files import write_atomic

# where a runtime module names none (``DEVICE``, ``DEVICE_SETUP``): a Jetson, JetPack's TensorRT seen through the venv
JETSON = "the device (JetPack's TensorRT; no torch)"
JETSON_SETUP = 'python3 -m venv --system-site-packages .venv && . .venv/bin/activate && pip install -e ".[jetson]"'

NOTES = "handoff.json"
README = "HANDOFF.md"
CONFIG = "config"  # the overlays, under the hand-off
LOCK = "models.lock"


@dataclass(frozen=True)
class Handoff:
    """What one ``doit handoff`` wrote: enough for the device to build the same bundles."""

    target: str
    models: Mapping[str, str]  # model -> version
    results: Mapping[str, Mapping[str, str]]  # model -> "stage" or "stage/graph" -> action key
    commit: str | None
    overlays: Sequence[Path] = ()  # the laptop's overlay files, copied under config/
    lock: Path | None = None  # models.lock, where a model reads a weight trusted on first use
    notes: list[str] = field(default_factory=list)
    device: str = JETSON  # the machine that finishes the build, for a person (the runtime module's DEVICE)
    setup: str = JETSON_SETUP  # its install line (the runtime module's DEVICE_SETUP)
    script: str | None = None  # a script that runs every device step, checks and benchmarks too (DEVICE_SCRIPT)

    def overlay_names(self) -> list[str]:
        return [f"{i}-{path.name}" for i, path in enumerate(self.overlays, 1)]

    def commands(self) -> list[str]:
        """The device's commands, in a clone of the same commit; ``$HANDOFF`` is where this directory is there."""
        build = ["doit", "build", f"target={self.target}", "model=" + ",".join(self.models)]
        if self.overlays:
            build.append("config=" + ",".join(f"$HANDOFF/{CONFIG}/{name}" for name in self.overlay_names()))
        lines = [
            "# HANDOFF=<this directory's path on the device>; the commit below must be pushed where the device clones from",
            f"git checkout {self.commit.removesuffix('-dirty')}" if self.commit else "# the laptop's checkout was not a git repository: use the same files",
            self.setup,
        ]
        if self.script is not None:  # before the install line
            lines.insert(-1, f'# or, instead of the lines below, with its install check and benchmarks: {self.script} "$HANDOFF"')
        if self.lock is not None:
            lines.append(f'cp "$HANDOFF/{LOCK}" {LOCK}')
        lines.append('GLUEFORGE_REMOTE_CACHE="$HANDOFF" ' + " ".join(_quote(a) for a in build))
        for model, version in self.models.items():
            lines.append(f"glueforge infer artifacts/store/{model}/{version}/{self.target} IMAGE0 IMAGE1")
        return lines

    def write(self, dest: Path) -> None:
        """The notes and the overlays (models.lock too, where needed) into ``dest``; a note is rewritten only
        when its content changes."""
        for name, path in zip(self.overlay_names(), self.overlays):
            _write(dest / CONFIG / name, path.read_bytes())
        if self.lock is not None:
            _write(dest / LOCK, self.lock.read_bytes())
        notes = {"target": self.target, "commit": self.commit, "models": dict(self.models),
                 "results": {m: dict(r) for m, r in self.results.items()}, "overlays": self.overlay_names(),
                 "models_lock": self.lock is not None, "commands": self.commands(), "notes": self.notes}
        _write(dest / NOTES, (json.dumps(notes, indent=1) + "\n").encode())
        _write(dest / README, self.readme().encode())

    def readme(self) -> str:
        models = "\n".join(f"- {m} {v}: {len(self.results.get(m, {}))} results" for m, v in self.models.items())
        notes = "".join(f"\n> {n}\n" for n in self.notes)
        return (f"# Hand-off for target {self.target}\n\n"
                f"Everything before the engine, built on the laptop (commit {self.commit or 'unknown'}):\n\n"
                f"{models}\n{notes}\n"
                f"On {self.device}, in a clone of the project, with this directory at "
                "`$HANDOFF`:\n\n```sh\n" + "\n".join(self.commands()) + "\n```\n\n"
                "The build takes the steps above from this directory (the remote cache's layout), then builds the "
                "engines, validates them on the device against the references in here, benches and bundles into "
                "the local store (`doit publish target=... store=...` publishes).\n")


def _quote(arg: str) -> str:
    """An argument for the shell, keeping ``$HANDOFF`` expandable."""
    return arg if "$HANDOFF" in arg and not any(c in arg for c in " '\"\\;&|") else shlex.quote(arg)


def _write(dest: Path, data: bytes) -> None:
    """``data`` into ``dest``, written only when it differs."""
    if not (dest.is_file() and dest.read_bytes() == data):
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data)
