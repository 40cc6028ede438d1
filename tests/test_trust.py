"""Trust what is pulled and run: names that cannot escape their roots, strict store locations, bundles verified
before they run, signed manifests (issue 16). Hand-made bundles (tests/test_store.py) and the real SeaweedFS
server; the real bundles' part is in tests/test_trusted_bundles.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glueforge import signing
from glueforge.names import UnsafeName, safe_name, safe_relative, safe_version, within
from glueforge.pull import pull
from glueforge.store import LocalStore, S3Store, open_store
from glueforge.verify import BundleTampered, verify_bundle
from tests.project import clone_project, doit
from tests.test_store import MODEL, TARGET, files, make_bundle

ESCAPES = ["..", "../x", "../../escaped", "a/b", "/abs", "", ".", "-rf", "a\\b", "x\0y", "a/../b"]


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: the snapshot that shows nothing was written."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glueforge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


# -- names ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ESCAPES)
def test_unsafe_names_are_refused(value):
    with pytest.raises(UnsafeName, match="not a safe name|not a relative path"):
        safe_name(value, "model")
    if value != "a/b":  # a relative path of safe names is a bundle file's name
        with pytest.raises(UnsafeName):
            safe_relative(value, "file")


def test_safe_names_pass_and_paths_stay_under_their_root(tmp_path):
    assert safe_name("aliked_lightglue", "model") == "aliked_lightglue"
    assert safe_version("1.2.0+jetson") == "1.2.0+jetson"
    assert safe_relative("trt/end2end.engine", "file") == "trt/end2end.engine"
    with pytest.raises(UnsafeName, match="not a PEP 440 version"):
        safe_version("../1.0")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert within(tmp_path / "root", "a", "b") == tmp_path / "root" / "a" / "b"
    with pytest.raises(UnsafeName, match="outside"):
        within(tmp_path / "root", "link", "x")  # a symbolic link out of the root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project's files, without artifacts."""
    return clone_project(tmp_path_factory.mktemp("trust") / "project")


def test_overlay_model_key_that_escapes_is_refused_before_anything_is_written(project, tmp_path):
    overlay = tmp_path / "team.yaml"
    overlay.write_text("models:\n  ../../escaped:\n    version: 0.1.0\n")
    before = tree(project.parent)
    proc, executed, _ = doit(project, "build", "target=cpu", f"config={overlay}")
    assert proc.returncode == 2 and "'../../escaped' is not a safe name" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and executed == []
    assert tree(project.parent) == before


@pytest.mark.parametrize("variable", ["channel=../../../../evilchan", "channel=latest,../x", "version=../1",
                                      "store=ftp://x", "store=s3:/x", "store=http://h/b", "store=s3://bucket/../up"])
def test_publish_refuses_unsafe_names_and_stores_before_anything_is_written(project, variable):
    before = tree(project.parent)
    proc, executed, _ = doit(project, "publish", "target=cpu", "model=xfeat_lighterglue", variable)
    assert proc.returncode == 2 and executed == [], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("glueforge: "), proc.stderr[-2000:]
    assert tree(project.parent) == before
    assert not any((project / d).exists() for d in ("ftp:", "s3:", "http:"))


@pytest.mark.parametrize("store_url", ["ftp://x", "s3:/x", "http://h/b"])
def test_pull_refuses_a_store_that_is_not_one(tmp_path, store_url):
    proc = cli("pull", MODEL, "--target", TARGET, "--store", store_url, "--dest", str(tmp_path / "dest"), cwd=tmp_path)
    refused(proc, "unsupported location")
    assert tree(tmp_path) == {}
    with pytest.raises(Exception, match="unsupported location"):
        open_store(store_url)


@pytest.mark.parametrize("argument", [["../../../some/dir", "--target", TARGET], [MODEL, "--target", "../t"],
                                      [MODEL, "--target", TARGET, "--channel", "../../c"]])
def test_pull_refuses_names_that_escape(tmp_path, argument):
    source = LocalStore(tmp_path / "store")
    source.publish(make_bundle(tmp_path / "staged", "1.0.0", files("p")), ["stable"])
    before = tree(tmp_path)
    proc = cli("pull", *argument, "--store", str(tmp_path / "store"), "--dest", str(tmp_path / "dest"))
    refused(proc, "is not a safe name")
    assert tree(tmp_path) == before


def test_pull_refuses_a_dest_that_is_a_file_and_a_manifest_naming_files_outside(tmp_path):
    source = LocalStore(tmp_path / "store")
    source.publish(make_bundle(tmp_path / "staged", "1.0.0", files("p")))
    (tmp_path / "file").write_text("x")
    refused(cli("pull", MODEL, "--target", TARGET, "--store", str(tmp_path / "store"), "--dest", str(tmp_path / "file")),
            "exists and is not a directory")
    manifest_path = source.bundle_path(MODEL, "1.0.0", TARGET) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../../outside.onnx"] = manifest["files"].pop("graph0.onnx")
    manifest_path.write_text(json.dumps(manifest))
    before = tree(tmp_path)
    refused(cli("pull", MODEL, "--target", TARGET, "--store", str(tmp_path / "store"), "--dest", str(tmp_path / "dest")),
            "file '../../../outside.onnx': part '..' is not a safe name")
    assert tree(tmp_path) == before


# -- verified bytes ---------------------------------------------------------------------------------------------
def test_verify_names_a_changed_or_missing_file(tmp_path):
    bundle = make_bundle(tmp_path / "b", "1.0.0", files("v", n=3, size=4000))
    assert cli("verify", str(bundle)).returncode == 0
    data = bytearray((bundle / "graph1.onnx").read_bytes())
    data[100] ^= 1
    (bundle / "graph1.onnx").write_bytes(bytes(data))
    refused(cli("verify", str(bundle)), "graph1.onnx does not match the manifest's sha256")
    (bundle / "graph2.onnx").unlink()
    with pytest.raises(BundleTampered, match="graph1.onnx does not match .* \\(and 1 more\\)"):
        verify_bundle(bundle)


# -- signed manifests --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs (ours, another's), written by `glueforge keygen`."""
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("ours", "other"):
        proc = cli("keygen", "--out", str(root / name))
        assert proc.returncode == 0 and proc.stdout.startswith("ed25519:"), proc.stderr
        out[name] = (root / name / signing.PRIVATE, root / name / signing.PUBLIC)
    assert oct((root / "ours" / signing.PRIVATE).stat().st_mode & 0o777) == "0o600"
    refused(cli("keygen", "--out", str(root / "ours")), "refusing to overwrite a key")
    return out


def signed_bundle(directory: Path, version: str, content: dict[str, bytes], private: Path) -> Path:
    make_bundle(directory, version, content)
    body, signature = signing.signed_manifest(json.loads((directory / "manifest.json").read_text()), signing.load_private(private))
    (directory / "manifest.json").write_bytes(body)
    (directory / "manifest.sig").write_bytes(signature)
    return directory


def test_signed_bundles_against_seaweedfs(s3_server, tmp_path, keys):
    store = S3Store(s3_server.url("t/signed"), s3_server.endpoint)
    ours, other = signing.trusted([keys["ours"][1]]), signing.trusted([keys["other"][1]])
    store.publish(signed_bundle(tmp_path / "s1", "1.0.0", files("s1"), keys["ours"][0]))
    path = pull(store, MODEL, TARGET, tmp_path / "dest", version="1.0.0", trusted_keys=ours)
    _, _, signer = verify_bundle(path, ours)
    assert signer == next(iter(ours)) and json.loads((path / "manifest.json").read_text())["signed_by"] == signer

    # an S3 writer without the key swaps a blob and rewrites the manifest's digest and size to match
    forged = b"forged engine bytes" * 10
    manifest = store.manifest(MODEL, "1.0.0", TARGET)
    manifest["files"]["graph1.onnx"] = {"sha256": hashlib.sha256(forged).hexdigest(), "size": len(forged)}
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=store.blob_key(hashlib.sha256(forged).hexdigest()), Body=forged)
    key = store.location.key("bundles", MODEL, "1.0.0", TARGET, "manifest.json")
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=json.dumps(manifest, indent=1).encode())
    with pytest.raises(signing.SignatureError, match="does not match the manifest; it was altered"):
        pull(store, MODEL, TARGET, tmp_path / "dest2", version="1.0.0", trusted_keys=ours)
    assert tree(tmp_path / "dest2") == {}
    pulled = pull(store, MODEL, TARGET, tmp_path / "dest3", version="1.0.0")  # without trust: the files match the forgery
    with pytest.raises(signing.SignatureError, match="altered"):
        verify_bundle(pulled, ours)  # and the bundle refuses to open for whoever trusts our key

    store.publish(signed_bundle(tmp_path / "s2", "2.0.0", files("s2"), keys["other"][0]))
    with pytest.raises(signing.SignatureError, match="signed by key ed25519:.*not among the trusted keys"):
        pull(store, MODEL, TARGET, tmp_path / "dest4", version="2.0.0", trusted_keys=ours)
    assert pull(store, MODEL, TARGET, tmp_path / "dest4", version="2.0.0", trusted_keys=other).is_dir()

    store.publish(make_bundle(tmp_path / "s3", "3.0.0", files("s3")))  # unsigned
    proc = cli("pull", MODEL, "--target", TARGET, "--version", "3.0.0", "--store", s3_server.url("t/signed"),
               "--endpoint-url", s3_server.endpoint, "--dest", str(tmp_path / "dest5"), "--trust", str(keys["ours"][1]))
    refused(proc, "unsigned (no manifest.sig), and a trusted key is required")
    assert tree(tmp_path / "dest5") == {}
    proc = cli("pull", MODEL, "--target", TARGET, "--version", "3.0.0", "--store", s3_server.url("t/signed"),
               "--endpoint-url", s3_server.endpoint, "--dest", str(tmp_path / "dest5"))
    assert proc.returncode == 0 and "is unsigned" in proc.stderr, proc.stderr
