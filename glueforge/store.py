"""Bundle stores: a local directory (the embedded default) and S3-compatible object storage.

A bundle is ``<model>/<version>/<target>/`` with its files and ``manifest.json``. One
interface, two implementations:

- ``LocalStore``: the files themselves under ``<root>/<model>/<version>/<target>/``; a
  bundle is copied to a temporary directory beside its destination, the manifest last, and
  renamed into place.
- ``S3Store``: files as content-addressed blobs (``blobs/sha256/<digest>``), uploaded first;
  then the manifest (``bundles/<model>/<version>/<target>/manifest.json``) with a
  conditional write. The manifest is the commit point: until it exists the bundle does not,
  and of two concurrent publishers of one version exactly one writes it.

Published versions are immutable: the same files again is a no-op, different files under an
existing version are refused. Channels (``latest``, ``stable``) are small pointer objects,
moved only after the bundle is complete. Standard library (and boto3 for S3) only: pulling
needs no torch, onnx or TensorRT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from glueforge import GlueforgeError
from glueforge.files import atomic_directory, mismatched, write_atomic

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


def _identity(manifest: dict[str, Any]) -> str:
    return f"{manifest['model']} {manifest['version']} for target {manifest['target']}"


class Store:
    """What publishing and pulling need from a store."""

    def manifest(self, model: str, version: str, target: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def versions(self, model: str, target: str) -> list[str]:
        raise NotImplementedError

    def channel(self, model: str, target: str, name: str) -> str | None:
        raise NotImplementedError

    def fetch_file(self, manifest: dict[str, Any], name: str, dest: Path) -> None:
        raise NotImplementedError

    def has(self, manifest: dict[str, Any], verify: bool = False) -> bool:
        """The store holds this bundle (its manifest lists the same files); with ``verify``, also every file intact,
        where the store can check that cheaply (a local store: sizes and sha256)."""
        existing = self.manifest(manifest["model"], manifest["version"], manifest["target"])
        return existing is not None and same_files(existing, manifest)

    def _refuse_or_accept(self, existing: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
        """True if ``existing`` is the same bundle (publishing is a no-op); raise if it differs."""
        if existing is None:
            return False
        if same_files(existing, manifest):
            log.info("%s is already in the %s with the same files", _identity(manifest), self)
            return True
        raise StoreConflict(
            f"{_identity(manifest)} already exists in the {self} with different files; published versions are "
            f"immutable: bump 'version' of model {manifest['model']!r} in models.yaml"
        )


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return f"local store {self.root}"

    def bundle_path(self, model: str, version: str, target: str) -> Path:
        return self.root / model / version / target

    def manifest(self, model: str, version: str, target: str) -> dict[str, Any] | None:
        return read_manifest(self.bundle_path(model, version, target))

    def versions(self, model: str, target: str) -> list[str]:
        base = self.root / model
        return sorted(p.name for p in base.iterdir() if (p / target / MANIFEST).is_file()) if base.is_dir() else []

    def channel(self, model: str, target: str, name: str) -> str | None:
        try:
            return json.loads((self.root / ".channels" / model / target / f"{name}.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return None

    def fetch_file(self, manifest: dict[str, Any], name: str, dest: Path) -> None:
        shutil.copyfile(self.bundle_path(manifest["model"], manifest["version"], manifest["target"]) / name, dest)

    def has(self, manifest: dict[str, Any], verify: bool = False) -> bool:
        return super().has(manifest) and (not verify or not self.damaged(manifest))

    def damaged(self, manifest: dict[str, Any]) -> list[str]:
        """The files of the stored bundle of ``manifest`` that are missing, or differ in size or sha256."""
        return mismatched(self.bundle_path(manifest["model"], manifest["version"], manifest["target"]), manifest["files"])

    def publish(self, staged: Path, channels: Sequence[str] = ()) -> Path:
        """Publish the bundle staged in ``staged`` (files plus manifest.json)."""
        manifest = read_manifest(staged)
        if manifest is None:
            raise GlueforgeError(f"{staged}: no readable {MANIFEST}; a bundle without a manifest does not exist")
        dest = self.bundle_path(manifest["model"], manifest["version"], manifest["target"])
        existing = read_manifest(dest)
        damaged = self.damaged(manifest) if existing is not None and same_files(existing, manifest) else []
        if damaged:  # the same bundle, but files of it were changed or deleted in the store: replace it whole
            log.warning("%s in the %s is damaged (%s); publishing it again", _identity(manifest), self, ", ".join(damaged))
        if damaged or not self._refuse_or_accept(existing, manifest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() and not damaged:  # a directory without a manifest is a leftover of an interrupted copy
                shutil.rmtree(dest)
            with atomic_directory(dest, replace=bool(damaged)) as tmp:
                for name in manifest["files"]:
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(staged / name, tmp / name)
                shutil.copyfile(staged / MANIFEST, tmp / MANIFEST)  # the manifest last
            log.info("published %s to %s", _identity(manifest), dest)
        for name in channels:
            pointer = self.root / ".channels" / manifest["model"] / manifest["target"] / f"{name}.json"
            write_atomic(pointer, json.dumps({"version": manifest["version"]}))
        return dest


class S3Store(Store):
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        from glueforge.s3 import Bucket, Location

        self.bucket = Bucket(Location.parse(url, endpoint_url))
        self.location = self.bucket.location

    def __str__(self) -> str:
        return f"store {self.location}"

    def _manifest_key(self, model: str, version: str, target: str) -> str:
        return self.location.key("bundles", model, version, target, MANIFEST)

    def blob_key(self, sha256: str) -> str:
        return self.location.key("blobs", "sha256", sha256)

    def manifest(self, model: str, version: str, target: str) -> dict[str, Any] | None:
        body = self.bucket.get_bytes(self._manifest_key(model, version, target))
        return json.loads(body) if body is not None else None

    def versions(self, model: str, target: str) -> list[str]:
        candidates = self.bucket.list_prefixes(self.location.key("bundles", model))
        return [v for v in candidates if self.bucket.exists(self._manifest_key(model, v, target))]

    def channel(self, model: str, target: str, name: str) -> str | None:
        body = self.bucket.get_bytes(self.location.key("channels", model, target, f"{name}.json"))
        return json.loads(body)["version"] if body is not None else None

    def fetch_file(self, manifest: dict[str, Any], name: str, dest: Path) -> None:
        entry = manifest["files"][name]
        self.bucket.download(self.blob_key(entry["sha256"]), dest, what=name, size=entry.get("size"))

    def upload_blobs(self, directory: Path, files: dict[str, dict[str, Any]]) -> None:
        for name, entry in files.items():
            key = self.blob_key(entry["sha256"])
            if not self.bucket.exists(key):
                self.bucket.upload(directory / name, key, what=name)

    def publish(self, staged: Path, channels: Sequence[str] = ()) -> str:
        manifest = read_manifest(staged)
        if manifest is None:
            raise GlueforgeError(f"{staged}: no readable {MANIFEST}; a bundle without a manifest does not exist")
        key = self._manifest_key(manifest["model"], manifest["version"], manifest["target"])
        if not self._refuse_or_accept(self.manifest(manifest["model"], manifest["version"], manifest["target"]), manifest):
            self.upload_blobs(staged, manifest["files"])  # files first ...
            if self.bucket.put_if_absent(key, (staged / MANIFEST).read_bytes()):  # ... the manifest last
                log.info("published %s to %s", _identity(manifest), self)
            else:  # another publisher wrote it between our check and our write
                self._refuse_or_accept(self.manifest(manifest["model"], manifest["version"], manifest["target"]), manifest)
        for name in channels:
            self.bucket.put_bytes(self.location.key("channels", manifest["model"], manifest["target"], f"{name}.json"),
                                  json.dumps({"version": manifest["version"]}).encode())
            log.info("channel %s of %s for %s -> %s", name, manifest["model"], manifest["target"], manifest["version"])
        return key


def open_store(url: str | os.PathLike, endpoint_url: str | None = None) -> Store:
    """``s3://bucket/prefix`` (with an optional endpoint URL) or a local directory."""
    text = str(url)
    if text.startswith("s3://"):
        return S3Store(text, endpoint_url)
    return LocalStore(Path(text))
