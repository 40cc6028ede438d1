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
from glueforge.names import UnsafeName, safe_name, safe_relative, safe_version, within

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # glueforge.signing


class StoreConflict(GlueforgeError):
    """A version already exists in the store with different content."""


def read_manifest(bundle: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def bundle_parts(model: str, version: str, target: str) -> tuple[str, str, str]:
    """The path components of one bundle, each checked (glueforge.names)."""
    return safe_name(model, "model"), safe_version(version), safe_name(target, "target")


def checked_files(manifest: dict[str, Any], where: object) -> dict[str, Any]:
    """The manifest's files, refused if any name is not a relative path of safe names (a manifest is read from a
    store, which anyone with write access to it could have written)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UnsafeName(f"{where}: the manifest has no files mapping")
    for name in files:
        safe_relative(name, f"{where}: file")
    return files


def parse_manifest(body: bytes, where: str) -> dict[str, Any]:
    """A manifest from its bytes (those a signature covers), or a GlueforgeError saying what ``where`` holds instead."""
    try:
        manifest = json.loads(body)
    except ValueError:
        raise GlueforgeError(f"{where} is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise GlueforgeError(f"{where} is not a JSON object")
    return manifest


def _plain_version(text: str) -> bool:
    try:
        return bool(safe_version(text))
    except UnsafeName:
        return False


def same_files(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v["sha256"] for k, v in a["files"].items()} == {k: v["sha256"] for k, v in b["files"].items()}


def _identity(manifest: dict[str, Any]) -> str:
    return f"{manifest['model']} {manifest['version']} for target {manifest['target']}"


class Store:
    """What publishing and pulling need from a store."""

    def manifest_bytes(self, model: str, version: str, target: str) -> bytes | None:
        """The stored manifest.json as written (a signature covers these bytes), or None."""
        raise NotImplementedError

    def signature(self, model: str, version: str, target: str) -> bytes | None:
        """The stored manifest.sig (glueforge.signing), or None for an unsigned bundle."""
        raise NotImplementedError

    def manifest(self, model: str, version: str, target: str) -> dict[str, Any] | None:
        body = self.manifest_bytes(model, version, target)
        return None if body is None else parse_manifest(body, f"{self}: the manifest of {model} {version} for {target}")

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
        return within(self.root, *bundle_parts(model, version, target), what="bundle")

    def _pointer(self, model: str, target: str, name: str) -> Path:
        parts = (safe_name(model, "model"), safe_name(target, "target"), f"{safe_name(name, 'channel')}.json")
        return within(self.root, ".channels", *parts, what="channel")

    def manifest_bytes(self, model: str, version: str, target: str) -> bytes | None:
        try:
            return (self.bundle_path(model, version, target) / MANIFEST).read_bytes()
        except OSError:
            return None

    def signature(self, model: str, version: str, target: str) -> bytes | None:
        try:
            return (self.bundle_path(model, version, target) / SIGNATURE).read_bytes()
        except OSError:
            return None

    def versions(self, model: str, target: str) -> list[str]:
        base = within(self.root, safe_name(model, "model"), what="model")
        safe_name(target, "target")
        return sorted(p.name for p in base.iterdir() if _plain_version(p.name) and (p / target / MANIFEST).is_file()) if base.is_dir() else []

    def channel(self, model: str, target: str, name: str) -> str | None:
        try:
            return json.loads(self._pointer(model, target, name).read_text())["version"]
        except (OSError, ValueError, KeyError):
            return None

    def fetch_file(self, manifest: dict[str, Any], name: str, dest: Path) -> None:
        bundle = self.bundle_path(manifest["model"], manifest["version"], manifest["target"])
        try:
            shutil.copyfile(within(bundle, safe_relative(name, "file"), what="file"), dest)
        except OSError as e:
            raise GlueforgeError(f"{self}: {_identity(manifest)}: cannot read {name} ({e.strerror}); the stored bundle "
                                 "is incomplete") from None

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
        checked_files(manifest, staged)
        for name in channels:
            self._pointer(manifest["model"], manifest["target"], name)  # every name checked before anything is written
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
                if (staged / SIGNATURE).is_file():
                    shutil.copyfile(staged / SIGNATURE, tmp / SIGNATURE)
                shutil.copyfile(staged / MANIFEST, tmp / MANIFEST)  # the manifest last
            log.info("published %s to %s", _identity(manifest), dest)
        for name in channels:
            write_atomic(self._pointer(manifest["model"], manifest["target"], name), json.dumps({"version": manifest["version"]}))
        return dest


class S3Store(Store):
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        from glueforge.s3 import Bucket, Location

        self.bucket = Bucket(Location.parse(url, endpoint_url))
        self.location = self.bucket.location

    def __str__(self) -> str:
        return f"store {self.location}"

    def _manifest_key(self, model: str, version: str, target: str) -> str:
        return self.location.key("bundles", *bundle_parts(model, version, target), MANIFEST)

    def _pointer_key(self, model: str, target: str, name: str) -> str:
        return self.location.key("channels", safe_name(model, "model"), safe_name(target, "target"),
                                 f"{safe_name(name, 'channel')}.json")

    def blob_key(self, sha256: str) -> str:
        if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise UnsafeName(f"{self}: {sha256!r} is not a sha256 digest")
        return self.location.key("blobs", "sha256", sha256)

    def manifest_bytes(self, model: str, version: str, target: str) -> bytes | None:
        return self.bucket.get_bytes(self._manifest_key(model, version, target))

    def signature(self, model: str, version: str, target: str) -> bytes | None:
        return self.bucket.get_bytes(self.location.key("bundles", *bundle_parts(model, version, target), SIGNATURE))

    def versions(self, model: str, target: str) -> list[str]:
        candidates = self.bucket.list_prefixes(self.location.key("bundles", safe_name(model, "model")))
        return [v for v in candidates if _plain_version(v) and self.bucket.exists(self._manifest_key(model, v, target))]

    def channel(self, model: str, target: str, name: str) -> str | None:
        body = self.bucket.get_bytes(self._pointer_key(model, target, name))
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
        checked_files(manifest, staged)
        pointers = [self._pointer_key(manifest["model"], manifest["target"], name) for name in channels]
        key = self._manifest_key(manifest["model"], manifest["version"], manifest["target"])
        if not self._refuse_or_accept(self.manifest(manifest["model"], manifest["version"], manifest["target"]), manifest):
            self.upload_blobs(staged, manifest["files"])  # files first ...
            if (staged / SIGNATURE).is_file():  # ... the signature of the manifest to come ...
                self.bucket.put_bytes(self.location.key("bundles", *bundle_parts(manifest["model"], manifest["version"],
                                                                                 manifest["target"]), SIGNATURE),
                                      (staged / SIGNATURE).read_bytes())
            if self.bucket.put_if_absent(key, (staged / MANIFEST).read_bytes()):  # ... the manifest last
                log.info("published %s to %s", _identity(manifest), self)
            else:  # another publisher wrote it between our check and our write
                self._refuse_or_accept(self.manifest(manifest["model"], manifest["version"], manifest["target"]), manifest)
        for name, pointer in zip(channels, pointers):
            self.bucket.put_bytes(pointer, json.dumps({"version": manifest["version"]}).encode())
            log.info("channel %s of %s for %s -> %s", name, manifest["model"], manifest["target"], manifest["version"])
        return key


class BadLocation(GlueforgeError):
    """A store location that is neither ``s3://bucket[/prefix]`` nor a local path."""


def parse_location(url: str | os.PathLike) -> str | Path:
    """A store location, parsed strictly: ``s3://bucket[/prefix]`` (returned as text), a local path without a scheme,
    or ``file://PATH`` (returned as a Path). Anything else (``ftp://x``, ``s3:/x``, ``http://host/b``) is refused
    rather than taken for a directory name."""
    import re

    text = os.fspath(url)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if scheme is None:
        if not text.strip():
            raise BadLocation("the store location is empty: give s3://bucket[/prefix] or a directory")
        return Path(text)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if text.startswith("s3://"):
        from glueforge.s3 import Location

        Location.parse(text)  # the bucket and prefix checked
        return text
    raise BadLocation(f"store {text!r}: unsupported location (give s3://bucket[/prefix], a directory, or file://PATH)")


def open_store(url: str | os.PathLike, endpoint_url: str | None = None) -> Store:
    """``s3://bucket/prefix`` (with an optional endpoint URL) or a local directory (``parse_location``)."""
    location = parse_location(url)
    if isinstance(location, str):
        return S3Store(location, endpoint_url)
    return LocalStore(location)
