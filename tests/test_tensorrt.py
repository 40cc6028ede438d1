"""TensorRT targets on a machine without TensorRT.

- `doit build target=orin_nano` gets to the fused ONNX, then the engine stage fails with a
  message naming what is missing and the exact commands a Jetson runner uses to finish;
- the trtexec path is driven through a stand-in trtexec (tests/stand_in/trtexec) and the
  Python builder path through a stand-in ``tensorrt`` package (tests/stand_in/tensorrt):
  arguments, version and device checks, output parsing, caching and the timing cache;
- no graph for a TensorRT target has an onnxruntime-only op.

Real TensorRT engines are built on the Jetson runners, where TensorRT exists.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import onnx
import pytest

from glueforge.config import Config
from glueforge.runtime import EngineBuildError
from glueforge.runtimes.tensorrt import parse_trtexec, profile_shapes, timing_cache_path, trtexec_command
from tests.project import ORIN_MODEL, clone_project, doit

STAND_IN = Path(__file__).resolve().parent / "stand_in"
MODEL = ORIN_MODEL  # the project after orin_nano's build and agx_orin's ONNX stages: tests/conftest.py ``fused``


def test_orin_nano_builds_to_fused_onnx_then_says_what_is_missing(fused):
    log = (fused / "orin_build.log").read_text()
    for stage in ("export", "simplify"):  # the graphs of rtx's build: the same views (K, the dense match form)
        assert f"-- {stage}:orin_nano:{MODEL}" in log
    assert f".  fuse:orin_nano:{MODEL}" in log and "tracing" not in log
    assert "TaskFailed - taskid:engine:orin_nano" in log
    assert "needs TensorRT 10.3 for compute capability 8.7" in log and "no trtexec" in log
    assert "doit build target=orin_nano" in log
    commands = sorted({line.strip() for line in log.splitlines() if line.strip().startswith("/usr/src/tensorrt/bin/trtexec --onnx=")})
    assert len(commands) == 3
    for command in commands:
        onnx_path = fused / command.split()[1].removeprefix("--onnx=")
        assert onnx_path.is_file() and "artifacts/cas/fuse/" in str(onnx_path)
        assert "--fp16" in command and "--skipInference" in command and "--minShapes=" in command
    # the project as the chain left it (the tests that build engines work in copies of it): no engine, no bundle
    pristine = fused.parent / "pristine"
    assert _cached(pristine, "engine") is None
    assert not list((pristine / "artifacts/store").glob(f"{MODEL}/*/orin_nano"))


def test_stopping_after_the_onnx_stages_on_purpose(fused):
    proc, executed, skipped = doit(fused, "fuse", "target=orin_nano", f"model={MODEL}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert executed == [] and f"fuse:orin_nano:{MODEL}" in skipped


@pytest.fixture()
def project(fused, tmp_path) -> Path:
    """A copy of the orin chain's project as the chain left it (hard links), for a test that builds in it."""
    return clone_project(tmp_path / "project", artifacts_from=fused.parent / "pristine")


def _cached(project: Path, stage: str, target: str = "orin_nano", stand_in: bool = False):
    """The cached result of ``stage`` for MODEL on ``target`` in ``project`` (its artifacts hold other targets'
    too), or None. ``stand_in``: computed as a build with the stand-in ``tensorrt`` computes it (the installed
    TensorRT is part of the engine's key)."""
    from glueforge.pipeline import Pipeline

    if stand_in:
        sys.path.insert(0, str(STAND_IN))
    try:
        return Pipeline.load(project).cached(stage, MODEL, target)
    finally:
        if stand_in:
            sys.path.remove(str(STAND_IN))
            sys.modules.pop("tensorrt", None)


def _result(project: Path, stage: str, target: str = "orin_nano", stand_in: bool = False):
    result = _cached(project, stage, target, stand_in)
    assert result is not None, f"{stage} of {MODEL} for {target} is not cached"
    return result


def test_tensorrt_graphs_have_no_onnxruntime_ops_and_dense_outputs(fused):
    graphs = list(_result(fused, "fuse").path.glob("*.onnx"))
    assert len(graphs) == 3
    for path in graphs:
        model = onnx.load(str(path), load_external_data=False)
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, path
        assert "NonZero" not in {n.op_type for n in model.graph.node}
        assert any(n.op_type == "LayerNormalization" for n in model.graph.node) or path.stem == "extractor"
        outputs = {o.name for o in model.graph.output}
        assert outputs & {"matches", "mscores"} == set()


def _engine(project: Path, env: dict[str, str], target: str = "orin_nano"):
    return doit(project, "engine", f"target={target}", f"model={MODEL}", env=env)


def test_trtexec_path_with_stand_in(project, tmp_path):
    calls = tmp_path / "calls.jsonl"
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7", "STANDIN_LOG": str(calls)}
    proc, executed, _ = _engine(project, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert executed == [f"engine:orin_nano:{MODEL}"]
    builds = [json.loads(line) for line in calls.read_text().splitlines() if line.strip() != '["--help"]']
    assert len(builds) == 3
    for args in builds:
        flags = {a.split("=", 1)[0]: a.partition("=")[2] for a in args}
        assert flags["--memPoolSize"] == "workspace:2048M"
        assert flags["--builderOptimizationLevel"] == "3" and flags["--profilingVerbosity"] == "detailed"
        assert "--fp16" in flags and flags["--precisionConstraints"] == "obey" and ":fp32" in flags["--layerPrecisions"]
        assert "--skipInference" in flags and flags["--exportLayerInfo"].endswith(".layers.json")
        assert flags["--timingCacheFile"].endswith(".cache") and "sm87-trt10.3.0-" in flags["--timingCacheFile"]
        graph = Path(flags["--saveEngine"]).stem
        if graph in ("end2end", "extractor"):  # end2end: a pair at least; extractor: one image (per frame)
            # H and W from models.yaml: export.sizes min and max, image_size the optimum
            assert flags["--minShapes"] == f"images:{1 if graph == 'extractor' else 2}x3x256x320"
            assert flags["--optShapes"] == f"images:{1 if graph == 'extractor' else 2}x3x480x640"  # tuned per frame
            assert flags["--maxShapes"] == "images:4x3x768x1280"
    engines = list(_result(project, "engine").path.glob("*.engine"))
    assert {e.stem for e in engines} == {"end2end", "extractor", "matcher"}
    assert all(json.loads(e.read_text())["stand_in_engine"] for e in engines)
    assert list((project / "artifacts/timing-cache").glob("sm87-trt10.3.0-*.cache"))
    # the bundle ships the graph each engine was built from, and the trtexec line that rebuilds it on the device
    result = json.loads((engines[0].parent / "result.json").read_text())["meta"]
    for graph, engine in result["engines"].items():
        assert (engines[0].parent / f"{graph}.onnx").is_file()
        assert engine["device_command"].startswith(f"/usr/src/tensorrt/bin/trtexec --onnx={graph}.onnx "
                                                   f"--saveEngine={graph}.engine --skipInference")
        assert "--fp16" in engine["device_command"] and "--layerPrecisions=" in engine["device_command"]

    calls.unlink()
    proc, executed, _ = _engine(project, env)  # cached by content: trtexec is not called again
    assert proc.returncode == 0 and executed == []
    assert not calls.exists() or all(line == '["--help"]' for line in calls.read_text().splitlines())


def test_orin_bundle_records_the_parser_proxy_and_the_device_commands(project):
    """With the trtexec stand-in's engines, bundled unvalidated (the engine cannot run here): the manifest records
    the TensorRT-RTX parser proxy's check of every graph, why it holds no benchmark, and the trtexec lines."""
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7"}
    proc, executed, _ = doit(project, "bundle", "target=orin_nano", f"model={MODEL}", "unvalidated=1", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((project / "artifacts/store" / MODEL / "0.2.0" / "orin_nano" / "manifest.json").read_text())
    proxy = manifest["prepared"]["check"]
    assert proxy["parser"].startswith("TensorRT-RTX ONNX parser") and proxy["version"].startswith("1.")
    assert proxy["compute_capability"] == "8.6"
    assert set(proxy["graphs"]) == {"end2end", "extractor", "matcher"}
    assert all(g["parsed"] and g["built"] and g["layers"] > 10 for g in proxy["graphs"].values())
    assert manifest["benchmarks"]["status"] == "not measured" and "TensorRT 10.3 is not installed" in manifest["benchmarks"]["reason"]
    commands = [c for what, c in manifest["reproduce"].items() if "engine on the device" in what]
    assert len(commands) == 3 and all(c.startswith("/usr/src/tensorrt/bin/trtexec --onnx=") for c in commands)
    assert {f"{g}.onnx" for g in proxy["graphs"]} <= set(manifest["files"])  # the graphs the commands build from


def test_parser_proxy_names_the_node_it_cannot_parse(tmp_path):
    from onnx import TensorProto, helper

    from glueforge.runtime import BuildContext
    from glueforge.runtimes import tensorrt

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="/net/relu"),
                               helper.make_node("Unique", ["r"], ["y"], name="/net/unique", sorted=1)], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "matcher.onnx"))
    target = Config.load(Path(__file__).resolve().parents[1] / "models.yaml").target("orin_nano")
    context = BuildContext(target_name="orin_nano", io={"matcher": {"inputs": [{"name": "x", "dtype": "float32", "shape": [4]}]}})
    with pytest.raises(EngineBuildError) as refused:
        tensorrt.check({"matcher": tmp_path / "matcher.onnx"}, target, context)
    message = str(refused.value)
    assert "the TensorRT parser proxy (TensorRT-RTX 1." in message and "cannot parse matcher" in message
    assert "name: /net/unique and operator: Unique" in message


def test_trtexec_release_mismatch_is_refused(fused):
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7", "STANDIN_TRT_VERSION": "100100"}
    proc, _, _ = _engine(fused, env, target="orin_nx")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "expects TensorRT 10.3" in out and "TensorRT 10.1.0" in out and "JetPack 6.2" in out


def test_compute_capability_mismatch_is_refused(fused):
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.6"}
    proc, _, _ = _engine(fused, env, target="orin_nx")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "compute capability 8.7" in out and "GPU is 8.6" in out


def test_trtexec_failure_is_reported_with_its_errors(fused):
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7", "STANDIN_FAIL": "1"}
    proc, _, _ = _engine(fused, env, target="orin_nx")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "trtexec failed" in out and "stand-in parser failure on node '/matcher/Foo'" in out


def test_python_builder_path_with_stand_in(project):
    env = {"PYTHONPATH": f"{STAND_IN}{os.pathsep}{project}", "GLUEFORGE_COMPUTE_CAPABILITY": "8.7"}
    proc, executed, _ = _engine(project, env, target="agx_orin")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert executed == [f"engine:agx_orin:{MODEL}"]
    result = _result(project, "engine", "agx_orin", stand_in=True).path / "result.json"
    meta = json.loads(result.read_text())["meta"]
    assert meta["builder"] == "python" and meta["tensorrt"] == "10.3.0.30" and meta["compute_capability"] == ["8.7"]
    fused_meta = _result(project, "fuse", "agx_orin").meta
    for graph in ("end2end", "extractor", "matcher"):
        record = json.loads((result.parent / f"{graph}.engine").read_text())
        assert sorted(record["flags"]) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
        assert record["pools"] == {"WORKSPACE": 8192 << 20} and record["builder_optimization_level"] == 3
        assert sorted(record["fp32_layers"]) == sorted(fused_meta[graph]["fp32_layers"]) and record["fp32_layers"]
        assert record["timing_cache"] is True
        shapes = record["profiles"][0]
        first = next(iter(shapes.values()))
        # agx_orin: 1, 2, 4 pairs; the extractor takes, and is tuned for, a single image
        assert [s[0] for s in first] == ([1, 1, 8] if graph == "extractor" else [2, 4, 8])
        assert meta["engines"][graph]["weights_memory_bytes"] == 1234


# -- pure functions ----------------------------------------------------------------------------------
def test_trtexec_command_and_output_parsing(tmp_path):
    target = Config.load(Path(__file__).resolve().parents[1] / "models.yaml").target("orin_nano")
    inputs = [{"name": "images", "dtype": "float32", "shape": ["2B", 3, 480, 640]}]
    cmd = trtexec_command(Path("trtexec"), Path("g.onnx"), Path("g.engine"), target, inputs, ["/a", "/b"],
                          Path("t.cache"), Path("g.layers.json"))
    assert cmd == ["trtexec", "--onnx=g.onnx", "--saveEngine=g.engine", "--skipInference", "--builderOptimizationLevel=3",
                   "--profilingVerbosity=detailed", "--memPoolSize=workspace:2048M", "--timingCacheFile=t.cache",
                   "--exportLayerInfo=g.layers.json", "--minShapes=images:2x3x480x640", "--optShapes=images:2x3x480x640",
                   "--maxShapes=images:4x3x480x640", "--fp16", "--precisionConstraints=obey", "--layerPrecisions=/a:fp32,/b:fp32"]
    log = ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=g.onnx\n[I] Compute Capability: 8.7\n"
           "[E] Error[4]: bad\n&&&& FAILED TensorRT.trtexec [TensorRT v100300]")
    assert parse_trtexec(log) == {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "passed": False,
                                  "errors": ["[E] Error[4]: bad"]}
    assert profile_shapes([{"name": "k", "shape": ["B", 1024]}], target.batch) == {"k": ([1, 1024], [1, 1024], [2, 1024])}
    # the extractor takes and is tuned for one image (per-frame extraction); pairs elsewhere
    assert profile_shapes([{"name": "images", "shape": ["N", 3, 480, 640]}], target.batch) == {
        "images": ([1, 3, 480, 640], [1, 3, 480, 640], [4, 3, 480, 640])}
    assert profile_shapes([{"name": "images", "shape": ["2B", 3, 480, 640]}], target.batch)["images"][0] == [2, 3, 480, 640]


def test_image_size_profiles_come_from_models_yaml():
    """Dynamic H and W: min/max from models.yaml ``export.sizes``, the optimum from ``export.image_size``."""
    config = Config.load(Path(__file__).resolve().parents[1] / "models.yaml")
    target = config.target("agx_orin")  # batch min 1, opt 2, max 4 pairs
    sizes = config.export_settings("aliked_lightglue", "agx_orin").sizes
    images = [{"name": "images", "shape": ["N", 3, "H", "W"]}]
    assert profile_shapes(images, target.batch, sizes) == {
        "images": ([1, 3, 256, 320], [1, 3, 480, 640], [8, 3, 768, 1280])}
    for model in ("disk_lightglue", "xfeat_lighterglue"):  # every model's H and W span a range on TensorRT targets
        spans = config.export_settings(model, "orin_nano").sizes
        assert spans["min"][0] < spans["opt"][0] < spans["max"][0] and spans["min"][1] < spans["opt"][1] < spans["max"][1]
    cmd = trtexec_command(Path("trtexec"), Path("g.onnx"), Path("g.engine"), target, images, sizes=sizes)
    assert "--minShapes=images:1x3x256x320" in cmd and "--maxShapes=images:8x3x768x1280" in cmd
    with pytest.raises(EngineBuildError, match="no profile for dimension 'H'"):
        profile_shapes(images, target.batch)


def test_timing_cache_is_keyed_and_never_mixed(tmp_path):
    config = Config.load(Path(__file__).resolve().parents[1] / "models.yaml")
    nano, nx = config.target("orin_nano"), config.target("orin_nx")
    a = timing_cache_path(tmp_path, nano, "10.3.0", "8.7")
    assert a == timing_cache_path(tmp_path, nano, "10.3.0", "8.7")
    assert len({a, timing_cache_path(tmp_path, nano, "10.4.0", "8.7"), timing_cache_path(tmp_path, nano, "10.3.0", "8.6"),
                timing_cache_path(tmp_path, nx, "10.3.0", "8.7")}) == 4  # nx has another workspace size
