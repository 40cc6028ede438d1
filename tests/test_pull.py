"""Pulling as a downstream application does: a virtual environment with only the pull
dependencies (boto3, PyYAML, packaging, pydantic, and numpy, Pillow, tqdm for running bundles),
and the machine-compatibility check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from glueforge.pull import PullError, check_compatibility
from glueforge.store import S3Store
from tests.project import MODELS, REPO, clone_project
from tests.test_store import MODEL, files, make_bundle

TARGET = "cpu"


def test_pull_only_environment_pulls_and_verifies(s3_server, tmp_path):
    store = S3Store(s3_server.url("t/pull-venv"), s3_server.endpoint)
    content = files("venv", n=4, size=100_000)
    store.publish(make_bundle(tmp_path / "staged", "1.4.0", content), ["stable"])
    trt = {"runtime": "tensorrt", "tensorrt": "10.3.0", "compute_capability": ["8.7"]}
    make_bundle(tmp_path / "trt", "1.4.0", files("trt"), runtime=trt)
    manifest = json.loads((tmp_path / "trt/manifest.json").read_text())
    manifest["target"] = "orin_nano"
    (tmp_path / "trt/manifest.json").write_text(json.dumps(manifest))
    store.publish(tmp_path / "trt")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    source = clone_project(tmp_path / "source")  # building a wheel writes build/ next to the sources
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    for heavy in ("torch", "onnx", "onnxruntime", "tensorrt", "kornia", "polygraphy"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is importable in the pull-only environment"

    glueforge = env_dir / "bin" / "glueforge"
    common = ["--store", s3_server.url("t/pull-venv"), "--endpoint-url", s3_server.endpoint, "--dest", str(tmp_path / "bundles")]
    pulled = subprocess.run([str(glueforge), "pull", MODEL, "--target", TARGET, "--version", ">=1.2,<2", *common],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    path = Path(pulled.stdout.strip())
    assert path == tmp_path / "bundles" / MODEL / "1.4.0" / TARGET
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != "manifest.json"} == content

    refused = subprocess.run([str(glueforge), "pull", MODEL, "--target", "orin_nano", "--check-compatibility", *common],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "", "GLUEFORGE_COMPUTE_CAPABILITY": "8.6"})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "needs tensorrt 10.3.0 on compute capability 8.7" in refused.stderr
    assert "this machine has tensorrt not installed on compute capability 8.6" in refused.stderr
    assert not (tmp_path / "bundles" / MODEL / "1.4.0" / "orin_nano").exists()


def test_compatible_machine_is_accepted(monkeypatch):
    monkeypatch.setenv("GLUEFORGE_COMPUTE_CAPABILITY", "8.6")
    from importlib import metadata

    rtx = metadata.version("tensorrt-rtx-cu13")
    manifest = {"model": MODEL, "version": "1.0.0", "target": "rtx",
                "runtime": {"runtime": "tensorrt_rtx", "tensorrt_rtx": rtx, "compute_capability": ["8.6", "8.9"]}}
    check_compatibility(manifest)
    monkeypatch.setenv("GLUEFORGE_COMPUTE_CAPABILITY", "7.5")
    with pytest.raises(PullError, match="compute capability 8.6, 8.9; this machine has tensorrt_rtx .* on compute capability 7.5"):
        check_compatibility(manifest)


def test_export_keys_need_no_torch(tmp_path):
    """A Jetson runner without torch computes the same action keys and so finds the x86 exports."""
    code = """
import json, sys
from importlib import metadata
real = metadata.version
def version(name):
    if name in ("torch", "kornia"):
        raise metadata.PackageNotFoundError(name)
    return real(name)
metadata.version = version
sys.modules["torch"] = None  # any import of torch now fails
from glueforge.pipeline import MissingInput, Pipeline
p = Pipeline.load()
keys = {}
for m in p.config.project.models:
    try:
        keys[m] = [p.key("export", m, "orin_nano", g) for g in p.graphs("export", m, "orin_nano")]
    except MissingInput:  # a first-use weight never fetched here: no digest, no key (test_overlay covers it)
        pass
print(json.dumps(keys))
"""
    without = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert without.returncode == 0, without.stderr[-3000:]
    from glueforge.pipeline import Pipeline

    pipeline = Pipeline.load(REPO)
    keys = json.loads(without.stdout)
    assert set(MODELS) | {"superpoint_lightglue", "superpoint_dense"} <= set(keys)  # every weight with a digest
    assert keys == {m: [pipeline.key("export", m, "orin_nano", g) for g in pipeline.graphs("export", m, "orin_nano")]
                    for m in keys}
