"""INT8 bundles, built by the session's int8 chain (tests/conftest.py): XFeat + LighterGlue for cpu_int8 and
openvino_int8, validated and bundled; orin_nano_int8's quantized graphs through the TensorRT parser proxy, and its
trtexec lines with INT8 (the trtexec stand-in, tests/stand_in/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import glueforge
from glueforge import quantize
from glueforge.schema import Calibration
from tests.project import INT8_MODEL, REPO, clone_project, doit

pytestmark = pytest.mark.slow
STAND_IN = REPO / "tests" / "stand_in"


def _bundle(project: Path, target: str) -> Path:
    return project / "artifacts" / "store" / INT8_MODEL / "0.1.0" / target


@pytest.mark.parametrize("target", ["cpu_int8", "openvino_int8"])
def test_an_int8_bundle_is_validated_and_says_how_it_was_quantized(int8_built, target):
    bundle = _bundle(int8_built, target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["validation"]["status"] == "passed"
    assert manifest["validation"]["homography"]["passed"]
    default = quantize.calibration_set(Calibration(), REPO)
    for graph in ("extractor", "end2end"):
        record = manifest["prepared"][graph]["int8"]
        assert record["calibration"]["sha256"] == default.digest and record["calibration"]["images"] == 12
        assert record["quantized_convolutions"] >= record["convolutions"] - len(record["float_convolutions"]) > 0
    assert "int8" not in manifest["prepared"]["matcher"]  # the matcher stays float
    if target == "cpu_int8":  # the graph itself carries the integer convolutions
        graph = onnx.load(str(bundle / "extractor.onnx"))
        assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 10
    report = (bundle / "report.html").read_text()
    assert "INT8: extractor" in report and "INT8 extractor against FP32" in report


@pytest.mark.parametrize("target", ["cpu_int8", "openvino_int8"])
def test_an_int8_bundle_matches_through_the_runtime_api_about_as_many_as_the_reference(int8_built, target):
    """The validation pair through the runtime API: at least 80 % as many matches as kornia's FP32 model made."""
    bundle_dir = _bundle(int8_built, target)
    reference = json.loads((bundle_dir / "manifest.json").read_text())["validation"]["graphs"]["end2end"]["metrics"]
    with np.load(bundle_dir / "sample.npz") as sample:
        pair = [sample["image0"], sample["image1"]]
    with glueforge.open(bundle_dir) as bundle:
        matches = bundle.match_pair(*pair)
    assert len(matches.matches) >= 0.8 * reference["reference_matches"] > 100


def test_orin_nano_int8_passes_the_parser_proxy_and_builds_with_int8_and_fp16(int8_built, tmp_path):
    project = clone_project(tmp_path / "project", artifacts_from=int8_built)
    env = {"GLUEFORGE_TRTEXEC": str(STAND_IN / "trtexec"), "GLUEFORGE_COMPUTE_CAPABILITY": "8.7"}
    proc, executed, _ = doit(project, "engine", "target=orin_nano_int8", f"model={INT8_MODEL}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert executed == [f"engine:orin_nano_int8:{INT8_MODEL}"]  # its fuse step (and proxy check) is the chain's
    engine_dir = next(p.parent for p in (project / "artifacts" / "cas" / "engine").glob("*/result.json")
                      if json.loads(p.read_text())["meta"].get("precision") == "int8")
    meta = json.loads((engine_dir / "result.json").read_text())["meta"]
    for graph in ("end2end", "extractor", "matcher"):
        command = meta["engines"][graph]["device_command"]
        assert " --fp16" in command and " --int8" in command, command
    fuse = next(json.loads(p.read_text())["meta"] for p in (project / "artifacts" / "cas" / "fuse").glob("*/result.json")
                if "int8" in json.loads(p.read_text())["meta"].get("extractor", {})
                and "check" in json.loads(p.read_text())["meta"])
    assert fuse["extractor"]["int8"]["recipe"].startswith("QDQ: symmetric int8")
    assert all(g["parsed"] and g["built"] for g in fuse["check"]["graphs"].values())
    assert set(fuse["check"]["graphs"]) == {"end2end", "extractor", "matcher"}
