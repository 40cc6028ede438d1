"""Files written whole or not at all, and their digests: the one implementation of each.

Every writer in glueforge (weights, cache entries, bundles, lock files, pulls) goes through
these: content lands in a temporary name beside its destination and is renamed into place,
so a reader never sees a half-written file or directory, and an interrupted writer leaves
only a temporary name that the next run ignores or removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mismatched(directory: Path, files: dict[str, dict], stamps: dict[str, list[int]] | None = None) -> list[str]:
    """The names in ``files`` (name -> {"sha256", "size"}) whose file under ``directory`` is missing or differs in
    size or sha256. A file whose [size, mtime_ns] equals its entry in ``stamps`` (taken when it was written) is not
    hashed again, as git's index does: any write to a file changes its modification time."""
    bad = []
    for name, entry in files.items():
        path = Path(directory) / name
        try:
            st = path.stat()
        except OSError:
            bad.append(name)
            continue
        if st.st_size != entry["size"]:
            bad.append(name)
        elif (stamps or {}).get(name) != [st.st_size, st.st_mtime_ns] and sha256_file(path) != entry["sha256"]:
            bad.append(name)
    return bad


def stamp(path: Path) -> list[int]:
    """[size, mtime_ns] of ``path``: what ``mismatched`` compares before hashing."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_file(dest: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest``, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(dest: Path, data: bytes | str) -> None:
    with atomic_file(dest) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_directory(dest: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest``; on success it is renamed to ``dest``.

    If ``dest`` appeared meanwhile (a concurrent writer of the same content-addressed entry)
    it is kept unless ``replace``; on error the temporary directory is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        yield tmp
        if dest.exists() and replace:
            shutil.rmtree(dest)
        if not dest.exists():
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# the temporary names of atomic_file (".<name>.<random>.part") and atomic_directory (".<name>.<random>"):
# tempfile's random part is 8 characters of [a-z0-9_]
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.part)?$")


def sweep_temporaries(root: Path) -> list[Path]:
    """Remove every temporary file or directory that an interrupted writer left under ``root``; return them.
    Only safe while no writer runs there (the build lock of ``glueforge.lock``)."""
    removed = []
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if _TEMPORARY.match(name):
                path = Path(directory) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not _TEMPORARY.match(d)]
    return removed
