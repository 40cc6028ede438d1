"""Content-addressed stage outputs.

Each stage output is a directory ``<root>/<stage>/<key>/`` named by its action key (the
sha256 of the stage, its code, its input digests, the configuration it reads and the
versions of the tools that shape its bytes) and holding ``result.json``: every file with its
sha256 and size, plus the stage's metadata. A result is built in a temporary directory and
renamed into place after ``result.json`` is written, so an entry either is complete or does
not exist. Entries whose files no longer match ``result.json`` are discarded on read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from glueforge.config import canonical_digest
from glueforge.fetch import sha256_file

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


def action_key(stage: str, payload: dict[str, Any]) -> str:
    return canonical_digest({"stage": stage, **payload})


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != RESULT:
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


class ActionCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str, verify: bool = True) -> Result | None:
        path = self.entry(stage, key)
        try:
            record = json.loads((path / RESULT).read_text())
        except (OSError, ValueError):
            return None
        result = Result(stage, key, path, record["files"], record["meta"])
        if verify and not self._intact(result):
            log.warning("%s cache entry %s is corrupt; discarding it", stage, key[:12])
            shutil.rmtree(path, ignore_errors=True)
            return None
        return result

    @staticmethod
    def _intact(result: Result) -> bool:
        for name, f in result.files.items():
            p = result.path / name
            if not p.is_file() or p.stat().st_size != f["size"] or sha256_file(p) != f["sha256"]:
                return False
        return True

    def put(self, stage: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Result:
        """Run ``build(tmpdir) -> meta`` and commit its files as the entry for ``key``."""
        final = self.entry(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:12]}."))
        try:
            meta = build(tmp)
            files = describe_files(tmp)
            (tmp / RESULT).write_text(json.dumps({"stage": stage, "key": key, "files": files, "meta": meta}, indent=1))
            if final.exists():  # a concurrent build finished first; results are equal by construction
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Result(stage, key, final, files, meta)
