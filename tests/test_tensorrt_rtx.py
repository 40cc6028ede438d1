"""Real TensorRT-RTX engines, built ahead of time on this GPU-less machine, for `rtx` and `rtx_2060`.

The engines run on RTX GPUs only, so what runs here is the FP16 ONNX each engine was compiled
from (shipped in the bundle next to it), with onnxruntime on the CPU, against kornia's FP32
reference on ../shared/data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import onnx
import pytest

from glueforge.files import sha256_file
from validation.parity import bundle_parity, table

from tests.project import clone_project, doit
from tests.test_build import MODELS, SHARED_DATA, VERSIONS, _reference_models

log = logging.getLogger(__name__)
TARGETS = {"rtx": ["8.6", "8.9", "12.0"], "rtx_2060": ["7.5"]}
FP16_PARITY = {"descriptor_cosine_mean": 0.995, "match_recall": 0.90}


@pytest.fixture(scope="module")
def rtx_built(tmp_path_factory, download_cache) -> Path:
    project = clone_project(tmp_path_factory.mktemp("rtx"))
    for target in TARGETS:
        proc, executed, _ = doit(project, "build", f"target={target}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        for model in MODELS:
            assert f"engine:{target}:{model}" in executed
    return project


@pytest.mark.parametrize("target", TARGETS)
def test_rtx_bundles_hold_real_engines(rtx_built, target):
    for model in MODELS:
        bundle = rtx_built / "artifacts/store" / model / VERSIONS[model] / target
        manifest = json.loads((bundle / "manifest.json").read_text())
        runtime = manifest["runtime"]
        assert runtime["runtime"] == "tensorrt_rtx" and runtime["tensorrt_rtx"].startswith("1.")
        assert runtime["compute_capability"] == TARGETS[target] and manifest["precision"] == "fp16"
        assert manifest["validation"]["status"] == "passed"
        for graph in ("end2end", "extractor", "matcher"):
            engine = runtime["engines"][graph]
            assert engine["engine_bytes"] == (bundle / f"{graph}.engine").stat().st_size > 1_000_000
            assert engine["weights_memory_bytes"] > 0 and engine["activation_memory_bytes"] > 0
            assert manifest["files"][f"{graph}.engine"]["sha256"] == sha256_file(bundle / f"{graph}.engine")
            model_fp16 = onnx.load(str(bundle / f"{graph}.onnx"), load_external_data=False)
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model_fp16.graph.initializer)
            assert {n.domain for n in model_fp16.graph.node} <= {"", "ai.onnx"}


def test_rtx_second_run_executes_nothing(rtx_built):
    for target in TARGETS:
        proc, executed, _ = doit(rtx_built, "build", f"target={target}")
        assert proc.returncode == 0 and executed == [], proc.stdout[-2000:]


@pytest.mark.parametrize("model", MODELS)
def test_fp16_onnx_parity_with_fp32_reference(rtx_built, download_cache, model):
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there (set GLUEFORGE_SHARED_DATA)")
    bundle = rtx_built / "artifacts/store" / model / VERSIONS[model] / "rtx"
    rows = bundle_parity(bundle, _reference_models(rtx_built, model, download_cache), SHARED_DATA)
    text = table(model, rows)
    log.info("FP16 ONNX (rtx) against kornia FP32:\n%s", text)
    report_dir = Path(os.environ.get("GLUEFORGE_PARITY_REPORT_DIR", rtx_built / "artifacts"))
    (report_dir / f"parity-fp16-{model}.txt").write_text(text + "\n")
    for name, m in rows:
        for metric, threshold in FP16_PARITY.items():
            assert m[metric] >= threshold, f"{model} {name}: {metric} {m[metric]:.5f} < {threshold}"
