"""pull: a versioned bundle from a store into a local cache, verified and installed atomically.

    glueforge pull aliked_lightglue --version ">=1.2,<2" --target orin_nano --dest DIR
    glueforge pull aliked_lightglue --channel stable --target cpu --dest DIR --check-compatibility

Needs only boto3 (for S3 stores), PyYAML and packaging: no torch, onnx or TensorRT. Every file
is checked against the manifest's sha256 before anything is installed; a file that does not
match refuses the pull and leaves nothing installed. Files already downloaded and verified
by an interrupted pull are kept, so running it again completes the bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from glueforge import GlueforgeError, machine
from glueforge.store import MANIFEST, Store, read_manifest, same_files

log = logging.getLogger(__name__)


class PullError(GlueforgeError):
    """The requested bundle does not exist, does not verify, or does not fit this machine."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(store: Store, model: str, target: str, version: str | None = None, channel: str | None = None) -> str:
    """The version to pull: a channel's pointer, or the highest version matching a specifier."""
    if channel:
        pinned = store.channel(model, target, channel)
        if pinned is None:
            raise PullError(f"{store}: no channel {channel!r} for {model} on target {target}")
        return pinned
    available = []
    for text in store.versions(model, target):
        try:
            available.append(Version(text))
        except InvalidVersion:
            continue
    if not available:
        raise PullError(f"{store}: no bundle of {model} for target {target}")
    try:
        spec = SpecifierSet(version or "")
    except InvalidSpecifier:
        spec = SpecifierSet(f"=={version}")
    matching = sorted(spec.filter(available, prereleases=None))
    if not matching:
        raise PullError(f"{store}: no version of {model} for target {target} matches {version!r}; "
                        f"available: {', '.join(str(v) for v in sorted(available))}")
    return str(matching[-1])


def check_compatibility(manifest: dict[str, Any]) -> None:
    """Refuse a bundle whose runtime release or compute capability this machine does not have."""
    runtime = manifest["runtime"]
    kind = runtime["runtime"]
    installed = machine.runtime_version(kind)
    if kind == "onnxruntime":
        if installed is None:
            raise PullError(f"{manifest['model']} {manifest['version']} for {manifest['target']} needs onnxruntime "
                            f"(built with {runtime.get('onnxruntime')}); this machine has none")
        return
    wanted = runtime.get("tensorrt") if kind == "tensorrt" else runtime.get("tensorrt_rtx")
    wanted_cc = runtime.get("compute_capability") or []
    cc = machine.compute_capability()
    same_release = installed is not None and wanted is not None and Version(installed).release[:2] == Version(wanted).release[:2]
    if not same_release or cc not in wanted_cc:
        raise PullError(
            f"{manifest['model']} {manifest['version']} for {manifest['target']} needs {kind} {wanted} on compute "
            f"capability {', '.join(wanted_cc) or '?'}; this machine has {kind} {installed or 'not installed'} on "
            f"compute capability {cc or 'unknown (no GPU found)'}"
        )


def pull(
    store: Store,
    model: str,
    target: str,
    dest: Path,
    version: str | None = None,
    channel: str | None = None,
    check: bool = False,
) -> Path:
    """Install the bundle under ``dest/<model>/<version>/<target>/`` and return that path."""
    resolved = resolve(store, model, target, version, channel)
    manifest = store.manifest(model, resolved, target)
    if manifest is None:
        raise PullError(f"{store}: {model} {resolved} for target {target} has no manifest")
    if check:
        check_compatibility(manifest)
    final = Path(dest) / model / resolved / target
    installed = read_manifest(final)
    if installed is not None and same_files(installed, manifest) and _verified(final, manifest):
        log.info("%s %s for %s already installed at %s", model, resolved, target, final)
        return final
    staging = Path(dest) / ".partial" / f"{model}-{resolved}-{target}"
    staging.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["files"].items():
        path = staging / name
        if path.is_file() and _sha256(path) == entry["sha256"]:
            continue  # verified by an earlier, interrupted pull
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        store.fetch_file(manifest, name, part)
        got = _sha256(part)
        if got != entry["sha256"]:
            part.unlink(missing_ok=True)
            raise PullError(f"{store}: {model} {resolved} for {target}: {name} has sha256 {got}, the manifest says "
                            f"{entry['sha256']}; the store copy is corrupt or was altered; nothing was installed")
        os.replace(part, path)
    # an interrupted download leaves its temporary file (s3transfer's "<name>.<random>") behind
    for leftover in [p for p in staging.rglob("*") if p.is_file() and p.relative_to(staging).as_posix() not in manifest["files"]]:
        leftover.unlink()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    log.info("installed %s %s for %s at %s", model, resolved, target, final)
    return final


def _verified(bundle: Path, manifest: dict[str, Any]) -> bool:
    return all((bundle / n).is_file() and _sha256(bundle / n) == e["sha256"] for n, e in manifest["files"].items())
