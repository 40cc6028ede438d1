"""Publishing and pulling against a real SeaweedFS S3 server (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from glueforge.pull import PullError, pull
from glueforge.s3 import StoreUnavailable
from glueforge.store import LocalStore, S3Store, StoreConflict

MODEL, TARGET = "aliked_lightglue", "cpu"


def make_bundle(directory: Path, version: str, files: dict[str, bytes], runtime: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {
        "model": MODEL, "version": version, "target": TARGET, "precision": "fp32",
        "runtime": runtime or {"runtime": "onnxruntime", "onnxruntime": "1.31.1"},
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
        "validation": {"status": "passed"},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def files(seed: str, n: int = 3, size: int = 1000) -> dict[str, bytes]:
    return {f"graph{i}.onnx": hashlib.sha256(f"{seed}{i}".encode()).digest() * (size // 32) for i in range(n)}


@pytest.fixture
def store(s3_server, request) -> S3Store:
    return S3Store(s3_server.url(f"t/{request.node.name}"), s3_server.endpoint)


def test_publish_then_pull_is_byte_identical(store, tmp_path):
    content = {**files("a"), "big.engine": os.urandom(40 << 20)}  # multipart upload
    staged = make_bundle(tmp_path / "staged", "1.2.0", content)
    store.publish(staged, ["latest"])
    make_bundle(tmp_path / "older", "1.1.0", files("old"))
    store.publish(tmp_path / "older")
    path = pull(store, MODEL, TARGET, tmp_path / "cache", version=">=1.2,<2")
    assert path == tmp_path / "cache" / MODEL / "1.2.0" / TARGET
    for name, data in content.items():
        assert (path / name).read_bytes() == data
    assert pull(store, MODEL, TARGET, tmp_path / "cache2", channel="latest").name == TARGET
    assert pull(store, MODEL, TARGET, tmp_path / "cache3", version="<1.2").parent.name == "1.1.0"
    with pytest.raises(PullError, match="no version .* matches '>=2'; available: 1.1.0, 1.2.0"):
        pull(store, MODEL, TARGET, tmp_path / "cache4", version=">=2")


def test_republishing_identical_bytes_is_a_noop(store, tmp_path, s3_server):
    staged = make_bundle(tmp_path / "staged", "1.0.0", files("a"))
    store.publish(staged)
    key = store._manifest_key(MODEL, "1.0.0", TARGET)
    before = s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)["ETag"]
    store.publish(make_bundle(tmp_path / "again", "1.0.0", files("a")))
    assert s3_server.client().head_object(Bucket=s3_server.bucket, Key=key)["ETag"] == before


def test_republishing_different_bytes_is_refused(store, tmp_path):
    store.publish(make_bundle(tmp_path / "staged", "1.0.0", files("a")))
    with pytest.raises(StoreConflict, match="already exists .* with different files; published versions are immutable"):
        store.publish(make_bundle(tmp_path / "other", "1.0.0", files("b")))
    assert store.manifest(MODEL, "1.0.0", TARGET)["files"] == json.loads((tmp_path / "staged/manifest.json").read_text())["files"]


def test_concurrent_publishes_of_one_version_exactly_one_wins(store, tmp_path):
    bundles = [make_bundle(tmp_path / s, "2.0.0", files(s, n=6, size=200_000)) for s in ("x", "y")]
    barrier, outcomes = threading.Barrier(2), {}

    def publish(staged: Path) -> None:
        barrier.wait()
        try:
            store.publish(staged)
            outcomes[staged.name] = "won"
        except StoreConflict as e:
            outcomes[staged.name] = e

    threads = [threading.Thread(target=publish, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    loser = next(o for o in outcomes.values() if o != "won")
    assert "already exists" in str(loser)
    stored = store.manifest(MODEL, "2.0.0", TARGET)
    assert stored["files"] == json.loads((tmp_path / winners[0] / "manifest.json").read_text())["files"]


def test_altered_file_in_store_refuses_pull_and_installs_nothing(store, tmp_path, s3_server):
    content = files("a")
    store.publish(make_bundle(tmp_path / "staged", "1.0.0", content))
    victim = hashlib.sha256(content["graph1.onnx"]).hexdigest()
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=store.blob_key(victim), Body=b"tampered")
    with pytest.raises(PullError, match="graph1.onnx has sha256 .* the manifest says .* nothing was installed"):
        pull(store, MODEL, TARGET, tmp_path / "cache", version="1.0.0")
    assert not (tmp_path / "cache" / MODEL / "1.0.0").exists()


def test_interrupted_pull_then_rerun_installs_a_complete_bundle(store, tmp_path, s3_server):
    content = {f"part{i:02d}.bin": os.urandom(6 << 20) for i in range(24)}
    store.publish(make_bundle(tmp_path / "staged", "3.0.0", content))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "glueforge.cli", "pull", MODEL, "--target", TARGET, "--version", "3.0.0",
           "--dest", str(cache), "--store", store.location.__class__.__name__ and f"s3://{s3_server.bucket}/{store.location.prefix}",
           "--endpoint-url", s3_server.endpoint]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = cache / ".partial" / f"{MODEL}-3.0.0-{TARGET}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if staging.is_dir() and len([p for p in staging.iterdir() if p.suffix == ".bin"]) >= 3:
            process.kill()
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode != 0, "the pull finished before it could be interrupted"
    assert not (cache / MODEL / "3.0.0" / TARGET).exists()
    # what a download killed mid-file leaves (s3transfer writes "<name>.<random>", then renames)
    (staging / "part00.bin.part.DEADBEEF").write_bytes(b"half a file")
    path = pull(store, MODEL, TARGET, cache, version="3.0.0")
    assert sorted(p.name for p in path.iterdir()) == sorted([*content, "manifest.json"])
    for name, data in content.items():
        assert (path / name).read_bytes() == data


def _closed_endpoint() -> str:
    """An endpoint on this machine where nothing listens (a port just bound and released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_server_gives_a_clear_error_and_loses_nothing(s3_server, tmp_path):
    """A server that is down (an endpoint where nothing listens: the session's server is shared by the tests and the
    build chains beside them, so it is not stopped here): publish raises one clear error and leaves the staged bundle
    as it was; the CLI's pull exits 2 with one line and no traceback, and writes nothing."""
    endpoint = _closed_endpoint()
    store = S3Store(s3_server.url("t/stopped"), endpoint)
    staged = make_bundle(tmp_path / "staged", "1.0.0", files("a"))
    before = {p.name: p.read_bytes() for p in staged.iterdir()}
    with pytest.raises(StoreUnavailable, match="cannot connect to the endpoint"):
        store.publish(staged)
    assert {p.name: p.read_bytes() for p in staged.iterdir()} == before
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "pull", MODEL, "--target", TARGET, "--dest",
                           str(tmp_path / "cache"), "--store", s3_server.url("t/stopped"), "--endpoint-url", endpoint],
                          capture_output=True, text=True, env={**os.environ, "GLUEFORGE_S3_ATTEMPTS": "2"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot connect to the endpoint" in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx"))


def test_no_credential_in_logs_manifests_or_errors(s3_server, tmp_path, caplog):
    secrets = (s3_server.access_key, s3_server.secret_key)
    store = S3Store(s3_server.url("t/secrets"), s3_server.endpoint)
    staged = make_bundle(tmp_path / "staged", "1.0.0", files("a"))
    caplog.set_level("DEBUG")
    store.publish(staged, ["stable"])
    pulled = pull(store, MODEL, TARGET, tmp_path / "cache", channel="stable")
    env = {**os.environ, "GLUEFORGE_LOG": "DEBUG"}
    ok = subprocess.run([sys.executable, "-m", "glueforge.cli", "pull", MODEL, "--target", TARGET, "--dest", str(tmp_path / "c2"),
                         "--store", s3_server.url("t/secrets"), "--endpoint-url", s3_server.endpoint], capture_output=True, text=True, env=env)
    wrong = subprocess.run([sys.executable, "-m", "glueforge.cli", "pull", MODEL, "--target", TARGET, "--dest", str(tmp_path / "c3"),
                            "--store", s3_server.url("t/secrets"), "--endpoint-url", s3_server.endpoint], capture_output=True, text=True,
                           env={**env, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key[::-1]})
    assert ok.returncode == 0 and wrong.returncode == 2 and "SignatureDoesNotMatch" in wrong.stderr
    texts = [caplog.text, ok.stdout, ok.stderr, wrong.stdout, wrong.stderr, (pulled / "manifest.json").read_text()]
    for text in texts:
        for secret in (*secrets, s3_server.secret_key[::-1]):
            assert secret not in text


def test_local_store_has_the_same_contract(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.publish(make_bundle(tmp_path / "a", "1.0.0", files("a")), ["latest"])
    store.publish(make_bundle(tmp_path / "a2", "1.0.0", files("a")))
    with pytest.raises(StoreConflict):
        store.publish(make_bundle(tmp_path / "b", "1.0.0", files("b")))
    path = pull(store, MODEL, TARGET, tmp_path / "cache", channel="latest")
    assert (path / "graph0.onnx").read_bytes() == files("a")["graph0.onnx"]
