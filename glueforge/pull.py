"""pull: a versioned bundle from a store into a local cache, verified and installed atomically.

    glueforge pull aliked_lightglue --version ">=1.2,<2" --target orin_nano --dest DIR
    glueforge pull aliked_lightglue --channel stable --target cpu --dest DIR --check-compatibility

Needs only boto3 (for S3 stores), PyYAML and packaging: no torch, onnx or TensorRT. Every file
is checked against the manifest's sha256 before anything is installed; a file that does not
match refuses the pull and leaves nothing installed. Files already downloaded and verified
by an interrupted pull are kept, so running it again completes the bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from glueforge import GlueforgeError, registry, signing
from glueforge.files import atomic_file, mismatched, sha256_file
from glueforge.licenses import summary
from glueforge.names import safe_name, within
from glueforge.store import MANIFEST, SIGNATURE, Store, bundle_parts, checked_files, parse_manifest

log = logging.getLogger(__name__)


class PullError(GlueforgeError):
    """The requested bundle does not exist, does not verify, or does not fit this machine."""


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
        try:
            spec = SpecifierSet(f"=={version}")
        except InvalidSpecifier:
            raise PullError(f"--version {version!r} is neither a version nor a specifier such as '>=1.2,<2'") from None
    matching = sorted(spec.filter(available, prereleases=None))
    if not matching:
        raise PullError(f"{store}: no version of {model} for target {target} matches {version!r}; "
                        f"available: {', '.join(str(v) for v in sorted(available))}")
    return str(matching[-1])


def check_compatibility(manifest: dict[str, Any]) -> None:
    """Refuse a bundle whose runtime release or device this machine does not have (its runtime module decides)."""
    try:
        registry.runtime(manifest["runtime"]["runtime"]).check_compatibility(manifest)
    except GlueforgeError as e:
        raise PullError(str(e)) from None


def pull(
    store: Store,
    model: str,
    target: str,
    dest: Path,
    version: str | None = None,
    channel: str | None = None,
    check: bool = False,
    trusted_keys: dict[str, Any] | None = None,
) -> Path:
    """Install the bundle under ``dest/<model>/<version>/<target>/`` and return that path. Every name that becomes
    a path (the arguments, the version the store resolves to, the manifest's file names) is checked first."""
    safe_name(model, "model")
    safe_name(target, "target")
    if channel is not None:
        safe_name(channel, "channel")
    if Path(dest).exists() and not Path(dest).is_dir():
        raise PullError(f"--dest {dest} exists and is not a directory")
    resolved = resolve(store, model, target, version, channel)
    parts = bundle_parts(model, resolved, target)
    body = store.manifest_bytes(*parts)
    if body is None:
        raise PullError(f"{store}: {model} {resolved} for target {target} has no manifest")
    where = f"{store}: {model} {resolved} for {target}"
    signature = store.signature(*parts)
    if trusted_keys:
        signer = signing.check(body, signature, trusted_keys, where)
        log.info("%s: manifest signed by trusted key %s", where, signer)
    manifest = parse_manifest(body, f"{where}: its manifest")  # the bytes the signature covered, not a second read
    if (manifest.get("model"), manifest.get("version"), manifest.get("target")) != parts:
        raise PullError(f"{where}: the manifest names {manifest.get('model')!r} {manifest.get('version')!r} for "
                        f"{manifest.get('target')!r}; nothing was installed")
    checked_files(manifest, where)
    if check:
        check_compatibility(manifest)
    final = within(dest, *parts, what="--dest")
    if (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == body and not mismatched(final, manifest["files"]):
        log.info("%s %s for %s already installed at %s", model, resolved, target, final)
        return final
    staging = within(dest, ".partial", f"{model}-{resolved}-{target}", what="--dest")
    staging.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest["files"].items():
        path = within(staging, name, what="file")
        if path.is_file() and sha256_file(path) == entry["sha256"]:
            continue  # verified by an earlier, interrupted pull
        with atomic_file(path) as part:  # in place only once verified
            store.fetch_file(manifest, name, part)
            got = sha256_file(part)
            if got != entry["sha256"]:
                raise PullError(f"{store}: {model} {resolved} for {target}: {name} has sha256 {got}, the manifest says "
                                f"{entry['sha256']}; the store copy is corrupt or was altered; nothing was installed")
    # an interrupted download leaves its temporary file (s3transfer's "<name>.<random>") behind
    for leftover in [p for p in staging.rglob("*") if p.is_file() and p.relative_to(staging).as_posix() not in manifest["files"]]:
        leftover.unlink()
    if signature is not None:
        (staging / SIGNATURE).write_bytes(signature)
    (staging / MANIFEST).write_bytes(body)  # as stored: the signature covers these bytes
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)  # one rename installs the verified bundle
    try:
        staging.parent.rmdir()  # .partial, when no other pull is under way
    except OSError:
        pass
    log.info("installed %s %s for %s at %s; %s", model, resolved, target, final, summary(manifest))
    if not trusted_keys and signature is None:
        log.warning("%s is unsigned: its files matched its manifest, but no key vouches for the manifest "
                    "(sign at publish, and pull with --trust)", where)
    return final

