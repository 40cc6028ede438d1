"""The TensorRT and TensorRT-RTX runners (``glueforge.runtimes.tensorrt.EngineGraph``) driven through the runtime
API and ``glueforge bench``, with stand-ins of TensorRT, TensorRT-RTX and cuda-python.

Neither an RTX GPU nor TensorRT exists here. The real ``rtx`` bundle of XFeat + LighterGlue (real
TensorRT-RTX engines, built in CI) is copied, and each engine file is replaced by a stand-in
engine that runs the FP16 ONNX shipped beside it with onnxruntime, on "device" memory that the
stand-in cuda-python allocates on the host (tests/stand_in/). A second copy is labelled a
TensorRT 10.3 bundle for Jetson. In a process with tests/stand_in first on the path, the runner
deserializes the engine, binds every input and output by name with the engine's dtypes, sets
input shapes within the profile, runs and copies back; the tests check those calls, the outputs
(equal to the FP16 ONNX's, the bundle's recorded sample), and the device-memory figure. On the
device the same code runs against the real packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import VERSIONS

STAND_IN = Path(__file__).resolve().parent / "stand_in"
MODEL = "xfeat_lighterglue"
RUNTIMES = {"tensorrt_rtx": "8.6", "tensorrt": "8.7"}  # runtime -> the stand-in machine's compute capability
SCRIPT = """
import json, sys
import numpy as np
import glueforge
bundle = glueforge.open(sys.argv[1])
sample = np.load(sys.argv[1] + "/sample.npz")
pair = bundle.match_pair(sample["image0"], sample["image1"])
one = bundle.extract(sample["image0"])[0]
found = bundle.match(*bundle.extract([sample["image0"], sample["image1"]]))
runner = bundle.runner("extractor")
out = {"pair_equal": bool(np.array_equal(pair.matches, sample["matches"])), "pair": len(pair.matches),
       "one": len(one), "match": len(found), "device_memory": bundle.device_memory(),
       "runners": {g: type(r).__module__ + "." + type(r).__name__ for g, r in bundle._open.items()},
       "trt": bundle._open["extractor"].trt.__file__,
       "buffers": {g: {n: s for n, (_, s) in r.buffers.items()} for g, r in bundle._open.items()},
       "engine_memory": {g: r.engine_memory for g, r in bundle._open.items()}}
try:
    bundle.run("extractor", {"images": np.zeros((5, 3, 480, 640), np.float32)})
except Exception as e:
    out["too_many"] = f"{type(e).__name__}: {e}"
try:
    bundle.run("extractor", {"images": np.zeros((1, 3, 480, 640), np.float64)})
except Exception as e:
    out["wrong_dtype"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def stand_in_bundles(rtx_built, tmp_path_factory) -> dict[str, Path]:
    sys.path.insert(0, str(STAND_IN))
    try:
        from tensorrt import stand_in_engine
    finally:
        sys.path.remove(str(STAND_IN))
        sys.modules.pop("tensorrt", None)
    from glueforge.cache import describe_files

    source = rtx_built / "artifacts/store" / MODEL / VERSIONS[MODEL] / "rtx"
    bundles = {}
    for runtime in RUNTIMES:
        dest = tmp_path_factory.mktemp(runtime) / "bundle"
        shutil.copytree(source, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        for graph, engine in manifest["runtime"]["engines"].items():
            (dest / f"{graph}.engine").write_bytes(stand_in_engine(str(dest / f"{graph}.onnx"), engine["profile_shapes"]))
        if runtime == "tensorrt":
            built = {k: v for k, v in manifest["runtime"].items() if k != "tensorrt_rtx"}
            manifest["runtime"] = {**built, "runtime": "tensorrt", "tensorrt": "10.3.0", "compute_capability": ["8.7"]}
        (dest / "manifest.json").unlink()
        manifest["files"] = describe_files(dest)  # the stand-in engines, as a build would have listed them
        (dest / "manifest.json").write_text(json.dumps(manifest))
        bundles[runtime] = dest
    return bundles


def _run(args: list[str], runtime: str, log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")]),
           "GLUEFORGE_COMPUTE_CAPABILITY": RUNTIMES[runtime], "STANDIN_TRT_LOG": str(log)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runner_binds_runs_and_counts_device_memory(stand_in_bundles, runtime, tmp_path):
    bundle, log = stand_in_bundles[runtime], tmp_path / "calls.jsonl"
    proc = _run(["-c", SCRIPT, str(bundle)], runtime, log)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["trt"].startswith(str(STAND_IN / ("tensorrt" if runtime == "tensorrt" else "tensorrt_rtx")))
    assert set(out["runners"].values()) == {"glueforge.runtimes.tensorrt.EngineGraph"}
    assert out["pair_equal"] and out["pair"] > 100 and out["one"] > 500 and out["match"] > 100
    # device memory: each engine's activation memory plus its input and output buffers
    assert out["device_memory"] == sum(out["engine_memory"].values()) + sum(sum(b.values()) for b in out["buffers"].values())
    k = 1024
    assert out["buffers"]["end2end"] == {"images": 2 * 3 * 480 * 640 * 4, "keypoints": 2 * k * 2 * 4,
                                         "matches0": k * 8, "mscores0": k * 4}
    assert out["buffers"]["extractor"]["images"] == 2 * 3 * 480 * 640 * 4  # grown from one image to two
    assert "outside the engine's profile (1, 3, 256, 320) .. (4, 3, 768, 1280)" in out["too_many"]  # H, W dynamic
    assert "input 'images' is float64; the engine takes float32" in out["wrong_dtype"]

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    shapes = [(c["name"], tuple(c["shape"])) for c in calls if c["call"] == "set_input_shape"]
    assert ("images", (2, 3, 480, 640)) in shapes and ("images", (1, 3, 480, 640)) in shapes  # a pair; one frame
    assert ("keypoints", (2, k, 2)) in shapes and ("image_sizes", (2, 2)) in shapes  # the matcher
    bound = {(c["name"], c["dtype"]) for c in calls if c["call"] == "set_tensor_address"}
    assert {("images", "float32"), ("keypoints", "float32"), ("matches0", "int64"), ("mscores0", "float32"),
            ("descriptors", "float32"), ("scores", "float32"), ("image_sizes", "float32")} <= bound
    assert {c["onnx"] for c in calls if c["call"] == "deserialize_cuda_engine"} == {"end2end.onnx", "extractor.onnx", "matcher.onnx"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bench_through_the_runner_reports_device_memory(stand_in_bundles, runtime, tmp_path):
    proc = _run(["-m", "glueforge.cli", "bench", str(stand_in_bundles[runtime]), "--batch", "1,2", "--runs", "2",
                 "--warmup", "0", "--json"], runtime, tmp_path / "calls.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["graph"], r["batch"]): r for r in json.loads(proc.stdout)["rows"]}
    assert set(rows) == {(g, b) for g in ("end2end", "extractor", "matcher") for b in (1, 2)}
    for (graph, batch), r in rows.items():
        assert r["device_mib"] is not None and r["device_mib"] > 0 and r["runs"] == 2
    # the extractor's images buffer for 2 images (7.0 MiB) and its activation memory
    assert rows[("end2end", 2)]["device_mib"] > rows[("end2end", 1)]["device_mib"]
    shapes = {tuple(json.loads(line).get("shape", ())) for line in (tmp_path / "calls.jsonl").read_text().splitlines()}
    assert (4, 3, 480, 640) in shapes  # end2end at 2 pairs: the profile's max


def test_without_the_device_the_runner_says_what_is_missing(stand_in_bundles, tmp_path):
    proc = _run(["-m", "glueforge.cli", "infer", str(stand_in_bundles["tensorrt"]), "--self-test"], "tensorrt", tmp_path / "l")
    assert proc.returncode == 0, proc.stderr[-2000:]  # with the stand-ins, the self-test passes
    env = {**os.environ, "GLUEFORGE_COMPUTE_CAPABILITY": "8.6"}
    plain = subprocess.run([sys.executable, "-m", "glueforge.cli", "infer", str(stand_in_bundles["tensorrt"]), "--self-test"],
                           capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "needs tensorrt 10.3.0 on compute capability 8.7" in plain.stderr or "no TensorRT Python package" in plain.stderr
