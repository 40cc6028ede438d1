"""Real TensorRT-RTX engines, built ahead of time on this GPU-less machine, for `rtx` and `rtx_2060`.

The engines run on RTX GPUs only, so what runs here is the FP16 ONNX each engine was compiled
from (shipped in the bundle next to it), with onnxruntime on the CPU, against kornia's FP32
reference on ../shared/data.
"""

from __future__ import annotations

import json
import logging
import re

import onnx
import pytest

from glueforge.config import Config
from glueforge.files import sha256_file

from tests.project import MATCHED, RTX_MODELS, RTX_TARGETS, VERSIONS, assert_parity, clone_project, doit

log = logging.getLogger(__name__)
TARGETS = RTX_TARGETS
FP16_PARITY = {"descriptor_cosine_mean": 0.995, "match_recall": 0.90}


@pytest.mark.parametrize("target", TARGETS)
def test_rtx_bundles_hold_real_engines(rtx_built, target):
    config = Config.load(rtx_built / "models.yaml")
    for model in RTX_MODELS[target]:
        bundle = rtx_built / "artifacts/store" / model / VERSIONS[model] / target
        manifest = json.loads((bundle / "manifest.json").read_text())
        runtime = manifest["runtime"]
        assert runtime["runtime"] == "tensorrt_rtx" and runtime["tensorrt_rtx"].startswith("1.")
        assert runtime["compute_capability"] == TARGETS[target] and manifest["precision"] == "fp16"
        assert manifest["validation"]["status"] == "passed"
        for graph in manifest["graphs"]:
            engine = runtime["engines"][graph]
            assert engine["engine_bytes"] == (bundle / f"{graph}.engine").stat().st_size > 1_000_000
            assert engine["weights_memory_bytes"] > 0 and engine["activation_memory_bytes"] > 0
            images = engine["profile_shapes"].get("images")
            if images:  # min/opt/max: the extractor takes and is tuned for one image (per frame), end2end a pair
                one = 1 if graph == "extractor" else 2
                assert images[0][0] == images[1][0] == one and images[2][0] == 2 * 2  # batch max 2 pairs
                # H and W: models.yaml's export.sizes min and max, its image_size the optimum
                export = config.model(model).export
                lo, hi = (export.sizes.min, export.sizes.max) if export.sizes else (export.image_size, export.image_size)
                assert [shape[2:] for shape in images] == [lo, export.image_size, hi]
                assert lo[0] < hi[0] and lo[1] < hi[1], (model, graph)  # dynamic H and W for every model
            assert manifest["files"][f"{graph}.engine"]["sha256"] == sha256_file(bundle / f"{graph}.engine")
            model_fp16 = onnx.load(str(bundle / f"{graph}.onnx"), load_external_data=False)
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model_fp16.graph.initializer)
            assert {n.domain for n in model_fp16.graph.node} <= {"", "ai.onnx"}
    if target != "rtx":
        return
    # one bundle validated at 480x640 and at KITTI's 376x1241 padded to 384x1248, every graph
    validation = json.loads((rtx_built / "artifacts/store/aliked_lightglue" / VERSIONS["aliked_lightglue"] / target /
                             "manifest.json").read_text())["validation"]
    for graph, result in validation["graphs"].items():
        assert set(result["sizes"]) == {"480x640", "384x1248"}, graph
        assert all(r["metrics"]["keypoint_mnn"] >= 0.9 for r in result["sizes"].values()), (graph, result)


def test_rtx_second_run_executes_nothing(rtx_built):
    for target in TARGETS:
        proc, executed, _ = doit(rtx_built, "build", f"target={target}", "model=" + ",".join(RTX_MODELS[target]))
        assert proc.returncode == 0 and executed == [], proc.stdout[-2000:]


@pytest.mark.parametrize("model", MATCHED)
def test_fp16_onnx_parity_with_fp32_reference(rtx_built, download_cache, model):
    text = assert_parity(rtx_built, model, "rtx", download_cache, FP16_PARITY)
    log.info("FP16 ONNX (rtx) against kornia FP32:\n%s", text)


def test_lint_refusal_prints_one_message_and_no_traceback(rtx_built, tmp_path):
    """A runtime whose parser lacks an op the graph uses: the fuse stage refuses, in one message."""
    project = clone_project(tmp_path, artifacts_from=rtx_built)
    module = project / "runtimes/tensorrt_rtx.py"
    text = module.read_text()
    assert 'refused={"NonZero":' in text
    module.write_text(text.replace('refused={"NonZero":', 'refused={"TopK": "no TopK in this test\'s parser", "NonZero":'))
    fused_before = sorted(p.name for p in (project / "artifacts/cas/fuse").iterdir())
    proc, executed, _ = doit(project, "fuse", "target=rtx", "model=xfeat_lighterglue")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and executed == ["fuse:rtx:xfeat_lighterglue"], out[-3000:]
    assert "Traceback" not in out
    assert out.count("problem(s) for TensorRT-RTX's ONNX parser") == 1, out[-3000:]
    assert re.search(r"TopK.*no TopK in this test's parser", out)
    assert sorted(p.name for p in (project / "artifacts/cas/fuse").iterdir()) == fused_before  # nothing cached


def test_rtx_manifests_say_why_they_hold_no_figures_and_how_to_measure(rtx_built):
    for target in TARGETS:
        for model in RTX_MODELS[target]:
            manifest = json.loads((rtx_built / "artifacts/store" / model / VERSIONS[model] / target / "manifest.json").read_text())
            bench = manifest["benchmarks"]
            assert bench["status"] == "not measured", (model, target)
            assert "TensorRT-RTX engines run on RTX GPUs" in bench["reason"] and "no GPU" in bench["reason"]
            assert bench["command"].startswith("glueforge bench <bundle directory> --batch 1 ")
            assert "glueforge engine <bundle directory> --out <directory>" in manifest["reproduce"].values()


def test_engine_rebuilds_from_the_bundle_alone(rtx_built, tmp_path):
    import subprocess
    import sys

    bundle = rtx_built / "artifacts/store/xfeat_lighterglue" / VERSIONS["xfeat_lighterglue"] / "rtx"
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "engine", str(bundle), "--graph", "extractor",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"extractor: {tmp_path / 'extractor.engine'}"
    rebuilt = json.loads((tmp_path / "engines.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert rebuilt["compute_capability"] == manifest["runtime"]["compute_capability"]
    assert rebuilt["engines"]["extractor"]["profile_shapes"] == manifest["runtime"]["engines"]["extractor"]["profile_shapes"]
    size = (tmp_path / "extractor.engine").stat().st_size
    assert abs(size - manifest["files"]["extractor.engine"]["size"]) < 0.05 * size
    refused = subprocess.run([sys.executable, "-m", "glueforge.cli", "engine", str(bundle), "--graph", "nope", "--out",
                              str(tmp_path / "x")], capture_output=True, text=True)
    assert refused.returncode == 2 and "has no graph nope; its graphs: end2end, extractor, matcher" in refused.stderr
