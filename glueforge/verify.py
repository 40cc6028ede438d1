"""Verify a bundle's bytes before they run.

``glueforge.open``, ``infer``, ``bench``, ``evaluate``, ``infer --self-test`` and ``glueforge verify``
check every file the manifest lists against its size and sha256 (Bazel's verify-on-read; pip's
hash-checking mode) and refuse a bundle with a file missing, changed, or named outside the bundle,
naming that file. Standard library only, beside ``glueforge.files``: the pull-only install runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glueforge import GlueforgeError
from glueforge.files import mismatched
from glueforge.names import UnsafeName
from glueforge.store import MANIFEST, SIGNATURE, checked_files, parse_manifest


class BundleError(GlueforgeError):
    """A bundle that cannot be opened, or a call it cannot serve (a graph it lacks, a bad image); glueforge.api
    raises it too."""


class BundleTampered(BundleError):
    """A bundle whose files do not match its manifest."""


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the bundle in ``directory``, or :class:`BundleTampered` saying why there is none."""
    path = Path(directory) / MANIFEST
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise BundleTampered(f"{directory}: no {MANIFEST}: not a bundle (a bundle without a manifest does not exist)") from None
    except OSError as e:
        raise BundleTampered(f"{path}: not readable ({e.strerror})") from None
    try:
        return parse_manifest(body, str(path))
    except GlueforgeError as e:
        raise BundleTampered(str(e)) from None


def verify_files(directory: Path, manifest: dict[str, Any]) -> int:
    """Check every file of ``manifest`` under ``directory``; return the bytes checked, or raise naming the first
    file that is missing or differs."""
    try:
        files = checked_files(manifest, directory)
    except UnsafeName as e:
        raise BundleTampered(str(e)) from None
    bad = mismatched(directory, files)
    if bad:
        name = bad[0]
        state = "is missing" if not (Path(directory) / name).is_file() else "does not match the manifest's sha256"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BundleTampered(f"{Path(directory) / name} {state}{more}: the bundle was changed after it was built; "
                             "refusing to run it (pull it again)")
    return sum(int(entry["size"]) for entry in files.values())


def verify_signature(directory: Path, keys: dict[str, Any]) -> str | None:
    """With trusted ``keys``: the key id that signed the bundle's manifest, or SignatureError. Without: None, and
    nothing is checked beyond the files (``verify_files``)."""
    from glueforge import signing

    if not keys:
        return None
    directory = Path(directory)
    try:
        body = (directory / MANIFEST).read_bytes()
    except OSError:
        raise BundleTampered(f"{directory}: no {MANIFEST}: not a bundle") from None
    signature = (directory / SIGNATURE).read_bytes() if (directory / SIGNATURE).is_file() else None
    return signing.check(body, signature, keys, str(directory))


def verify_bundle(directory: Path, trusted_keys: dict[str, Any] | None = None) -> tuple[dict[str, Any], int, str | None]:
    """The manifest, the bytes checked and the signer's key id (None: no trust list) of the bundle in ``directory``,
    once its signature (with ``trusted_keys``) and every file check out."""
    signer = verify_signature(directory, trusted_keys or {})
    manifest = read_manifest(directory)
    return manifest, verify_files(directory, manifest), signer
