"""Content-addressed stage outputs.

Each stage output is a directory ``<root>/<stage>/<key>/`` named by its action key (the
sha256 of the stage, its code, its input digests, the configuration it reads and the
versions of the tools that shape its bytes) and holding ``result.json``: every file with its
sha256 and size, plus the stage's metadata. A result is built in a temporary directory and
renamed into place after ``result.json`` is written, so an entry either is complete or does
not exist. Entries whose files no longer match ``result.json`` are discarded on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from glueforge import GlueforgeError
from glueforge.files import atomic_directory, atomic_file, mismatched, sha256_file, stamp, write_atomic
from glueforge.names import safe_relative

log = logging.getLogger(__name__)
RESULT = "result.json"


@dataclass(frozen=True)
class Result:
    stage: str
    key: str
    path: Path
    files: dict[str, dict[str, Any]]
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise KeyError(f"{self.stage} result {self.key[:12]} has no file {name!r}")
        return self.path / name

    def digests(self) -> dict[str, str]:
        return {name: f["sha256"] for name, f in self.files.items()}


class GraphResults(dict):
    """The results of a per-graph stage's steps for one model, graph -> :class:`Result`, read as one input:
    ``file(name)`` finds the file in whichever graph's result holds it, ``digests()`` keys them by graph."""

    def file(self, name: str) -> Path:
        for result in self.values():
            if name in result.files:
                return result.path / name
        raise KeyError(f"no graph result has a file {name!r} (graphs: {', '.join(self)})")

    def digests(self) -> dict[str, str]:
        return {f"{graph}/{name}": digest for graph, result in self.items() for name, digest in result.digests().items()}

    @property
    def meta(self) -> dict[str, Any]:
        return {graph: result.meta for graph, result in self.items()}


def action_key(stage: str, payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the stage name and its payload."""
    text = json.dumps({"stage": stage, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != RESULT:
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


class SharedResults(Protocol):
    """Where stage results are shared between machines, in the manner of a Bazel remote cache: a step that misses
    locally is fetched from here before it is built, and a step built here is pushed. A result is its files as
    content-addressed blobs plus a record ``cache/<stage>/<key>.json``, written last and only if absent."""

    def fetch(self, stage: str, key: str, into: Path) -> dict[str, Any] | None:
        """Download the result of ``key`` into the directory ``into``, every file verified; None on a miss."""

    def push(self, result: "Result") -> None:
        """Share ``result`` (a record already there stands: results of one key are equal by construction)."""


def _checked_record(body: bytes, where: object, stage: str, key: str) -> dict[str, Any]:
    """A shared record, its file names and digests checked before any becomes a path."""
    try:
        record = json.loads(body)
        files = record["files"]
        if not isinstance(files, dict) or not isinstance(record.get("meta"), dict):
            raise ValueError("files and meta must be mappings")
        for name, entry in files.items():
            safe_relative(name, f"{where}: {stage} {key[:12]} file")
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"file {name!r} has no sha256 digest")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise GlueforgeError(f"{where}: the record of {stage} {key[:12]} is not a result record ({e})") from None
    return record


def _fetch_files(record: dict[str, Any], into: Path, where: object, stage: str, key: str,
                 get: Callable[[str, Path], None]) -> dict[str, Any]:
    """Every file of a checked ``record`` into ``into`` (``get(digest, path)`` writes one blob), each verified
    against its sha256; the record."""
    for name, entry in record["files"].items():
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        get(entry["sha256"], path)
        if sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{where}: blob of {stage} {key[:12]} {name} does not match its sha256")
    return record


class RemoteCache:
    """Stage results shared through an S3 store (:class:`SharedResults`), the blobs shared with published bundles.
    Runners share nothing else and never talk to each other."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        from glueforge.store import S3Store

        self.store = S3Store(url, endpoint_url)

    def __str__(self) -> str:
        return f"remote cache {self.store.location}"

    def _record(self, stage: str, key: str) -> str:
        return self.store.location.key("cache", stage, f"{key}.json")

    def fetch(self, stage: str, key: str, into: Path) -> dict[str, Any] | None:
        body = self.store.bucket.get_bytes(self._record(stage, key))
        if body is None:
            return None
        return _fetch_files(_checked_record(body, self, stage, key), into, self, stage, key,
                            lambda digest, path: self.store.bucket.download(self.store.blob_key(digest), path))

    def push(self, result: "Result") -> None:
        self.store.upload_blobs(result.path, result.files)
        record = {"stage": result.stage, "key": result.key, "files": result.files, "meta": result.meta}
        self.store.bucket.put_if_absent(self._record(result.stage, result.key), json.dumps(record).encode())


class DirectoryCache:
    """Stage results shared through a directory (:class:`SharedResults`): the hand-off from a laptop to a device
    with no S3 between them (``doit handoff``), or a shared disk. The layout is the S3 remote cache's:
    ``cache/<stage>/<key>.json`` and ``blobs/sha256/<digest>``; every file is written atomically, the record last."""

    def __init__(self, root: Path, create: bool = False) -> None:
        self.root = Path(root).expanduser()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise GlueforgeError(f"remote cache directory {self.root} does not exist (GLUEFORGE_REMOTE_CACHE, or "
                                 "cache.remote.url of models.yaml: a directory, or s3://bucket/prefix)")

    def __str__(self) -> str:
        return f"remote cache {self.root}"

    def _record(self, stage: str, key: str) -> Path:
        return self.root / "cache" / stage / f"{key}.json"

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has(self, stage: str, key: str) -> bool:
        return self._record(stage, key).is_file()

    def fetch(self, stage: str, key: str, into: Path) -> dict[str, Any] | None:
        try:
            body = self._record(stage, key).read_bytes()
        except FileNotFoundError:
            return None
        return _fetch_files(_checked_record(body, self, stage, key), into, self, stage, key, self._copy_blob)

    def _copy_blob(self, digest: str, path: Path) -> None:
        try:
            shutil.copyfile(self._blob(digest), path)
        except FileNotFoundError:
            raise ValueError(f"{self}: blob {digest[:12]} is missing") from None

    def push(self, result: "Result") -> None:
        try:
            for name, entry in result.files.items():
                blob = self._blob(entry["sha256"])
                if not blob.is_file():
                    blob.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_file(blob) as tmp:
                        shutil.copyfile(result.path / name, tmp)
            record = self._record(result.stage, result.key)
            if not record.is_file():
                record.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(record, json.dumps({"stage": result.stage, "key": result.key, "files": result.files,
                                                 "meta": result.meta}))
        except OSError as e:  # a read-only hand-off, a full disk: the local result stands
            raise GlueforgeError(f"{self}: cannot write ({e.strerror or e})") from None


def open_remote(url: str, endpoint_url: str | None = None) -> SharedResults:
    """The remote cache at ``url``: ``s3://bucket/prefix`` (with an optional endpoint URL), or an existing
    directory (a path, or ``file://PATH``)."""
    from glueforge.store import parse_location

    location = parse_location(url)
    if isinstance(location, Path):
        return DirectoryCache(location)
    return RemoteCache(location, endpoint_url)


class _Miss(Exception):
    """No remote result for a key."""


class ActionCache:
    def __init__(self, root: Path, remote: SharedResults | None = None) -> None:
        self.root = Path(root)
        self.remote = remote

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str, verify: bool = True) -> Result | None:
        path = self.entry(stage, key)
        try:
            record = json.loads((path / RESULT).read_text())
        except (OSError, ValueError):
            if path.exists():  # an entry without a readable record is no entry: it would block the rebuild's rename
                log.warning("%s cache entry %s has no readable %s; discarding it", stage, key[:12], RESULT)
                shutil.rmtree(path, ignore_errors=True)
            return self._from_remote(stage, key)
        result = Result(stage, key, path, record["files"], record["meta"])
        if verify and not self._intact(result, record.get("stamps", {})):
            log.warning("%s cache entry %s is corrupt; discarding it", stage, key[:12])
            shutil.rmtree(path, ignore_errors=True)
            return None
        return result

    def _from_remote(self, stage: str, key: str) -> Result | None:
        if self.remote is None:
            return None
        final = self.entry(stage, key)
        try:
            with atomic_directory(final) as tmp:
                record = self.remote.fetch(stage, key, tmp)
                if record is None:
                    raise _Miss  # leaves nothing behind
                self._record(tmp, stage, key, record["files"], record["meta"])
        except _Miss:
            return None
        except (GlueforgeError, ValueError) as e:
            log.warning("%s %s: %s; building locally", stage, key[:12], e)
            return None
        log.info("%s %s: taken from the %s", stage, key[:12], self.remote)
        return Result(stage, key, final, record["files"], record["meta"])

    @staticmethod
    def _intact(result: Result, stamps: dict[str, list[int]]) -> bool:
        """Every file is there with its size and sha256 (not hashed again while its stamp from the commit holds:
        an entry is immutable)."""
        return not mismatched(result.path, result.files, stamps)

    @staticmethod
    def _record(directory: Path, stage: str, key: str, files: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write ``result.json``: the files with their digests, the metadata, and the local stamps."""
        stamps = {name: stamp(directory / name) for name in files}
        record = {"stage": stage, "key": key, "files": files, "meta": meta, "stamps": stamps}
        (directory / RESULT).write_text(json.dumps(record, indent=1))

    def put(self, stage: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Result:
        """Run ``build(tmpdir) -> meta`` and commit its files as the entry for ``key``.

        If a concurrent build of the same key finished first, its entry stands: results are
        equal by construction.
        """
        final = self.entry(stage, key)
        with atomic_directory(final) as tmp:
            meta = build(tmp)
            files = describe_files(tmp)
            self._record(tmp, stage, key, files, meta)
        result = Result(stage, key, final, files, meta)
        if self.remote is not None:
            try:
                self.remote.push(result)
            except GlueforgeError as e:  # the local result stands; the next runner builds it again
                log.warning("%s %s: not shared: %s", stage, key[:12], e)
        return result
