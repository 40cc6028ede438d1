"""Adaptive depth in a built bundle (clone D: tests/conftest.py adaptive_chain, tests/adaptive.yaml's XFeat + LighterGlue).

- The cpu bundle: its manifest states the exit rule, the runtime API stops early on consecutive KITTI frames and runs
  every layer at fixed depth, validation judged every step graph and recorded the layers used, bench times the
  adaptive matcher, the report shows the policy; bench refuses a step graph on its own.
- orin_nano's fuse step ran the TensorRT parser proxy on every step graph.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import glueforge
from glueforge import depth
from glueforge.api import BundleError, load_image
from glueforge.config import Config
from glueforge.exporters import lightglue

from tests.project import ADAPTIVE_MODEL, ADAPTIVE_OVERLAY, REPO, SHARED_DATA


def _bundle_dir(project):
    return project / "artifacts" / "store" / ADAPTIVE_MODEL / Config.load(REPO / "models.yaml", [ADAPTIVE_OVERLAY]).model(ADAPTIVE_MODEL).version / "cpu"


@pytest.mark.slow
def test_adaptive_bundle_runs_layer_by_layer(adaptive_built):
    """The adaptive-depth cpu bundle: its manifest states the exit rule, the runtime API stops early on consecutive
    frames and runs every layer at fixed depth, the validation records the layers used, the report shows the policy."""
    directory = _bundle_dir(adaptive_built)
    manifest = json.loads((directory / "manifest.json").read_text())
    rule = manifest["matcher"]["depth"]
    assert rule["policy"] == "adaptive" and rule["depth_confidence"] == 0.95 and rule["layers"] == 6
    assert rule["thresholds"] == pytest.approx(lightglue.confidence_thresholds(6))
    assert set(manifest["graphs"]) == {"extractor", "matcher", *depth.step_graphs(6)}  # tests/adaptive.yaml: no end2end
    frames = [load_image(SHARED_DATA / "sequences" / "kitti" / name) for name in ("000100.png", "000101.png")]
    with glueforge.open(directory) as bundle:
        f0, f1 = bundle.extract(frames)
        adaptive, fixed = bundle.match(f0, f1), bundle.match(f0, f1, depth="fixed")
        assert fixed.layers == 6 and adaptive.layers < 6, (fixed.layers, adaptive.layers)
        expected = {tuple(m) for m in fixed.matches.tolist()}
        assert len(expected) > 100
        assert len(expected & {tuple(m) for m in adaptive.matches.tolist()}) >= 0.9 * len(expected)
        assert bundle.match_pair(*frames).layers == adaptive.layers  # the bundle's policy
        assert bundle.match_pair(*frames, depth="fixed").layers == 6
        with pytest.raises(BundleError, match="depth='deep' is not a depth policy"):
            bundle.match(f0, f1, depth="deep")
    validation = json.loads((directory / "validation.json").read_text())
    assert validation["homography"]["depth"] == "adaptive" and validation["homography"]["passed"]
    pairs = validation["adaptive_depth"]["pairs"]
    assert pairs and all(1 <= p["layers"] <= 6 and 0 <= p["reproduced"] <= 1 for p in pairs)
    for step in depth.step_graphs(6):
        assert validation["graphs"][step]["passed"], step
    exits = [validation["graphs"][depth.exit_graph(i)]["metrics"]["match_agreement"] for i in range(6)]
    assert min(exits) >= 0.95, exits
    for i in range(5):  # every layer with a confidence head took the golden outputs' decision
        assert validation["graphs"][depth.layer_graph(i)]["metrics"]["stop_decisions_agree"] == 1.0
    rows = {r["graph"]: r for r in manifest["benchmarks"]["rows"]}
    assert {"extractor", "matcher", "matcher adaptive (of 6 layers)"} == set(rows)
    assert 1 <= rows["matcher adaptive (of 6 layers)"]["layers"] <= 6
    report = (directory / "report.html").read_text()
    assert "adaptive, up to 6 layers (depth_confidence 0.95)" in report and "<h2>Adaptive depth</h2>" in report
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "bench", str(directory), "--graphs", "matcher_layer0",
                           "--runs", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "the 'matcher adaptive' row" in proc.stderr and "Traceback" not in proc.stderr
    # the sample records the layers its matcher ran, and the self-test shows them beside this run's
    with np.load(directory / "sample.npz") as sample:
        recorded = int(sample["layers"])
    assert 1 <= recorded <= 6
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "infer", str(directory), "--self-test"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(rf"matcher layers run: [1-6] \(recorded: {recorded}\)", proc.stdout), proc.stdout
    # the rebuild command names the overlays it was built with (outside this clone: by file name)
    rebuild = next(c for what, c in manifest["reproduce"].items() if what.startswith("the bundle"))
    assert rebuild.endswith(f"model={ADAPTIVE_MODEL} config=adaptive.yaml,ci.yaml"), rebuild


@pytest.mark.slow
def test_step_graphs_pass_the_parser_proxy(adaptive_built):
    """orin_nano's fuse step (the chain's) ran the TensorRT parser proxy on every step graph."""
    checks = [json.loads(p.read_text())["meta"]["check"] for p in (adaptive_built / "artifacts" / "cas" / "fuse").glob("*/result.json")
              if "matcher_layer0" in json.loads(p.read_text())["meta"].get("check", {}).get("graphs", {})]
    assert checks, "no fuse step checked the step graphs"
    graphs = checks[0]["graphs"]
    assert set(depth.step_graphs(6)) <= set(graphs)
    assert all(graphs[g]["parsed"] and graphs[g]["built"] for g in depth.step_graphs(6)), graphs
