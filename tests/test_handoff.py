"""From a laptop to a Jetson, as README "From a laptop to a Jetson (no S3, no runner)" says: the test runs that
section's commands (its ``sh laptop`` and ``sh device`` blocks) for XFeat + LighterGlue (the quickest model).

- The laptop is a clone of the orin chain's project (its graphs for the TensorRT targets are built):
  ``doit handoff target=orin_nano ... dest=DIR``.
- The device is a fresh copy of the project without artifacts, in a new venv with the ``jetson`` extra and no
  torch (not ``--system-site-packages`` here: the stand-ins take JetPack's place). TensorRT, trtexec and
  cuda-python are the stand-ins of tests/stand_in: the stand-in trtexec's engine runs the ONNX it was built from
  with onnxruntime. The device's build takes every step before the engine from DIR, fetches no weight, builds
  the engines, validates them on the "device" through the runtime API's engine runner, benches and bundles; then
  ``glueforge infer`` runs the bundle on a photograph pair.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.project import REPO, SHARED_DATA, VERSIONS, clone_project, doit, parse_doit

MODEL = "xfeat_lighterglue"
TARGET = "orin_nano"
STAND_IN = Path(__file__).resolve().parent / "stand_in"
README_MODEL = "aliked_lightglue"  # the model the README's commands name
pytestmark = pytest.mark.xdist_group("handoff")  # one worker makes the hand-off (module fixture) for both tests


def section_block(kind: str) -> list[str]:
    """The command lines of the README section's ``sh <kind>`` block."""
    text = (REPO / "README.md").read_text()
    section = text.split("### From a laptop to a Jetson", 1)[1].split("\n#", 1)[0]
    body = re.search(rf"^```sh {kind}\n(.*?)^```", section, re.M | re.S)
    assert body, f"README: the hand-off section has no ```sh {kind} block"
    return [line for line in body.group(1).splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def handoff(fused, tmp_path_factory) -> Path:
    laptop = clone_project(tmp_path_factory.mktemp("laptop") / "project", artifacts_from=fused)
    dest = laptop.parent / "handoff"
    [line] = section_block("laptop")
    args = shlex.split(line.replace(f"model={README_MODEL}", f"model={MODEL}").replace("dest=handoff", f"dest={dest}"))
    assert args[:2] == ["doit", "handoff"]
    proc, executed, _ = doit(laptop, *args[1:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"handoff:{TARGET}:{MODEL}" in executed
    return dest


def test_the_handoff_holds_every_step_before_the_engine_and_says_what_the_device_runs(handoff):
    notes = json.loads((handoff / "handoff.json").read_text())
    assert notes["target"] == TARGET and notes["models"] == {MODEL: VERSIONS[MODEL]}
    steps = notes["results"][MODEL]
    assert {s.split("/")[0] for s in steps} == {"export", "interface", "reference", "simplify", "fuse"}
    for step, key in steps.items():  # each result's record, and each of its files as a verified blob
        record = json.loads((handoff / "cache" / step.split("/")[0] / f"{key}.json").read_text())
        for entry in record["files"].values():
            assert (handoff / "blobs/sha256" / entry["sha256"]).stat().st_size == entry["size"]
    build = [c for c in notes["commands"] if "doit build" in c]
    assert build == [f'GLUEFORGE_REMOTE_CACHE="$HANDOFF" doit build target={TARGET} model={MODEL} '
                     f'config=$HANDOFF/config/1-ci.yaml']  # the tests' overlay travels with the hand-off
    assert (handoff / "config/1-ci.yaml").read_text() == (REPO / "tests/ci.yaml").read_text()
    readme = (handoff / "HANDOFF.md").read_text()
    assert all(c in readme for c in notes["commands"])


def test_the_device_builds_validates_and_infers_without_torch(handoff, tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the photographs live there (set GLUEFORGE_SHARED_DATA)")
    device = clone_project(tmp_path / "device")
    setup, build, infer = section_block("device")
    assert "--system-site-packages" in setup  # JetPack's TensorRT; the stand-ins take its place here
    env = {**os.environ, "PYTHONPATH": str(STAND_IN), "HANDOFF": str(handoff),
           "GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7",
           "GLUEFORGE_DOWNLOAD_CACHE": str(device / "artifacts/downloads")}
    env.pop("VIRTUAL_ENV", None)

    def sh(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], cwd=device, capture_output=True, text=True, env=env)

    proc = sh(setup.replace("--system-site-packages ", "").replace("pip install -e", "pip install -q -e"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sh(". .venv/bin/activate && python -c 'import torch'").returncode != 0  # no torch on the device
    assert sh(". .venv/bin/activate && python -c 'import kornia'").returncode != 0

    proc, executed, _ = parse_doit(sh(". .venv/bin/activate && " + build.replace(f"model={README_MODEL}", f"model={MODEL}")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {f"{stage}:{TARGET}:{MODEL}" for stage in ("engine", "validate", "benchmark", "bundle")} <= set(executed)
    assert not [t for t in executed if t.split(":")[0] in ("fetch", "export", "reference", "simplify", "fuse")], executed
    assert not [p for p in (device / "artifacts/downloads").rglob("*") if p.is_file()]  # no weight fetched
    assert "taken from the remote cache" in proc.stderr

    bundle = device / "artifacts/store" / MODEL / VERSIONS[MODEL] / TARGET
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed", manifest["validation"]
    assert manifest["runtime"]["builder"] == "trtexec" and manifest["runtime"]["tensorrt"] == "10.3.0"
    validation = json.loads((bundle / "validation.json").read_text())
    assert validation["passed"] and validation["homography"]["passed"]

    readme_bundle = f"artifacts/store/{README_MODEL}/{VERSIONS[README_MODEL]}/orin_nano"
    assert readme_bundle in infer, f"README: {infer!r} names another version than models.yaml's"
    image0, image1 = SHARED_DATA / "pairs/st_pauls_1.jpg", SHARED_DATA / "pairs/st_pauls_2.jpg"
    line = infer.replace(readme_bundle, str(bundle.relative_to(device))).replace("IMAGE0", str(image0)).replace("IMAGE1", str(image1))
    proc = sh(". .venv/bin/activate && " + line + f" --out {tmp_path / 'matches.png'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    matches = int(proc.stdout.splitlines()[0].split(" matches")[0].rsplit(" ", 1)[1])
    assert matches >= 50, proc.stdout  # a wide-baseline pair of one cathedral


def test_handoff_without_a_directory_is_refused_before_anything_is_built(fused, tmp_path):
    laptop = clone_project(tmp_path / "laptop", artifacts_from=fused)
    proc, executed, _ = doit(laptop, "handoff", f"target={TARGET}", f"model={MODEL}")
    assert proc.returncode != 0 and "doit handoff needs dest=DIR" in proc.stdout + proc.stderr
    assert not [t for t in executed if not t.startswith("handoff:")], executed
    proc, executed, _ = doit(laptop, "handoff", f"target={TARGET}", f"model={MODEL}", "dest=s3://bucket/x")
    assert proc.returncode == 2 and executed == []
    assert "dest=s3://bucket/x: a hand-off is written to a directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback

