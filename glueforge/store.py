"""Bundle stores. The local directory store is the embedded default.

A bundle is ``<model>/<version>/<target>/`` with its files and ``manifest.json``. Versions
are immutable: publishing the same files again is a no-op, different files under an
existing version are refused. A bundle is copied into a temporary directory beside its
destination, the manifest last, and renamed into place, so a reader never sees a bundle
without its manifest or a manifest without its files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from glueforge import GlueforgeError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class StoreConflict(GlueforgeError):
    """A version already exists in the store with different content."""


def read_manifest(bundle: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def same_files(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v["sha256"] for k, v in a["files"].items()} == {k: v["sha256"] for k, v in b["files"].items()}


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return f"local store {self.root}"

    def bundle_path(self, model: str, version: str, target: str) -> Path:
        return self.root / model / version / target

    def has(self, manifest: dict[str, Any]) -> bool:
        existing = read_manifest(self.bundle_path(manifest["model"], manifest["version"], manifest["target"]))
        return existing is not None and same_files(existing, manifest)

    def put_bundle(self, staged: Path) -> Path:
        """Publish the bundle staged in ``staged`` (files plus manifest.json)."""
        manifest = read_manifest(staged)
        if manifest is None:
            raise GlueforgeError(f"{staged}: no readable {MANIFEST}; a bundle without a manifest does not exist")
        dest = self.bundle_path(manifest["model"], manifest["version"], manifest["target"])
        existing = read_manifest(dest)
        if existing is not None:
            if same_files(existing, manifest):
                log.info("%s %s for %s is already in the %s with the same files", manifest["model"], manifest["version"], manifest["target"], self)
                return dest
            raise StoreConflict(
                f"{manifest['model']} {manifest['version']} for target {manifest['target']} already exists in the {self} "
                f"with different files; published versions are immutable: bump 'version' of model "
                f"{manifest['model']!r} in models.yaml"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # a directory without a manifest is a leftover of an interrupted copy
            shutil.rmtree(dest)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            for name in manifest["files"]:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staged / name, tmp / name)
            shutil.copyfile(staged / MANIFEST, tmp / MANIFEST)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("published %s %s for %s to %s", manifest["model"], manifest["version"], manifest["target"], dest)
        return dest
