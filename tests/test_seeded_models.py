"""SuperPoint (keypoints, dense, open) and SIFT + LightGlue end to end, on seeded random weights.

Their real weights are on GitHub, which this machine and CI cannot reach (the build fails at
fetch without an overlay: tests/test_build.py::test_every_model_builds_where_its_weights_are_reachable).
Here an overlay (``config=``) declares seeded random weights in the upstream layouts
(tests/seeded.py) by their sha256, and the models build as a user's would, in a chain of builds that
runs beside the rest of the session (tests/conftest.py ``seeded``, tests/background.py):

- ``cpu``, ``openvino`` and ``rtx`` bundles build and validate: every graph at every validated
  size against the family's unpatched PyTorch module, with nonzero matches for the matched models;
- ``orin_nano`` gets through the ONNX stages (export, simplify, fuse with the TensorRT lint);
- the manifests name the overlay's weights with their digests, the image-size profiles
  and, for SIFT, the host extractor.

What this cannot show: accuracy on real images. The README lists these models as not validated
on real weights here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.project import UNREACHABLE, VERSIONS

MATCHED = ("superpoint_lightglue", "sift_lightglue")


def _manifest(project: Path, model: str, target: str) -> dict:
    return json.loads((project / "artifacts/store" / model / VERSIONS[model] / target / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["cpu", "openvino", "rtx"])
def test_seeded_models_build_and_validate(seeded, target):
    project = seeded.project
    proc, executed, _ = seeded.builds[target]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert {f"bundle:{target}:{m}" for m in UNREACHABLE} <= set(executed)
    for model in UNREACHABLE:
        manifest = _manifest(project, model, target)
        validation = manifest["validation"]
        assert validation["status"] == "passed", (model, validation)
        graphs = validation["graphs"]
        expected = {"superpoint_lightglue": {"end2end", "extractor", "matcher"}, "sift_lightglue": {"matcher"}}
        assert set(graphs) == expected.get(model, {"extractor"}), model
        for graph, result in graphs.items():
            for size, at_size in result["sizes"].items():
                metrics = at_size["metrics"]
                assert metrics["keypoint_mnn"] >= 0.98, (model, graph, size, metrics)
                if "descriptor_cosine_min" in metrics:
                    assert metrics["descriptor_cosine_min"] >= 0.999, (model, graph, size, metrics)
                if model in MATCHED and graph != "extractor":
                    # random weights still match: the recall is over a nonempty set of the reference's matches
                    assert metrics["reference_matches"] > 0 and metrics["match_recall"] >= 0.95, (model, graph, size, metrics)
        weights = manifest["provenance"]["weights"]
        for role, w in weights.items():
            assert w["trust"] == "declared" and w["sources"][0].startswith("file ") and "seeded" in w["sources"][0], (model, role)
    # superpoint_lightglue validates at two sizes from one traced graph (the overlay's: tests/seeded.py)
    sizes = _manifest(project, "superpoint_lightglue", target)["validation"]["graphs"]["end2end"]["sizes"]
    assert set(sizes) == {"240x320", "184x624"}
    sift = _manifest(project, "sift_lightglue", target)["preprocessing"]
    assert sift["extractor"].startswith("on the host: OpenCV SIFT") and "any H and W" in sift["size"]


def test_seeded_models_reach_the_onnx_stages_for_orin_nano(seeded):
    proc, executed, skipped = seeded.builds["orin_nano"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert {f"fuse:orin_nano:{m}" for m in UNREACHABLE} <= set(executed)
    # one fused graph per graph of each model (3 + 1 + 1 + 1), each through the TensorRT lint without a warning
    lint = re.findall(r"fuse (\w+) for tensorrt: \{'lint_warnings': (\d+)", proc.stderr)
    assert len(lint) == 6 and all(n == "0" for _, n in lint), proc.stderr[-3000:]


@pytest.mark.parametrize("target", ["cpu", "openvino", "rtx"])
def test_seeded_models_survive_degenerate_inputs(seeded, target):
    """After the builds above: tests/degenerate.py's cases on every seeded bundle (the rtx one through its FP16 ONNX)."""
    import numpy as np

    import glueforge
    from tests.degenerate import half, measured_bundle, problems

    project = seeded.project
    for model in UNREACHABLE:
        directory = project / "artifacts/store" / model / VERSIONS[model] / target
        with (measured_bundle(directory) if target == "rtx" else glueforge.open(directory)) as bundle:
            found = problems(bundle, half(np.load(directory / "sample.npz")["image0"]), trained_matcher=False)
        assert found == [], (model, found)


def test_noncommercial_weights_publish_only_when_acknowledged(seeded, tmp_path):
    """Magic Leap's SuperPoint weights (and superpoint_lightglue, usable only with them) forbid commercial use: their
    licence is in the manifest and report, and `doit publish` refuses them until the configuration names them."""
    from tests.project import REPO, doit

    bundle = seeded.project / "artifacts/store/superpoint_lightglue" / VERSIONS["superpoint_lightglue"] / "cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["licenses"]["commercial"] is False
    assert manifest["licenses"]["weights"]["superpoint_v1"]["spdx"] == "LicenseRef-MagicLeap-SuperPoint-NonCommercial"
    assert "LicenseRef-MagicLeap-SuperPoint-NonCommercial" in (bundle / "report.html").read_text()
    config = f"config={seeded.overlay},{REPO / 'tests' / 'ci.yaml'}"
    store = tmp_path / "store"
    proc, executed, _ = doit(seeded.project, "publish", "target=cpu", config, "model=superpoint_lightglue", f"store={store}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "forbids commercial use" in out and "store.acknowledge_noncommercial" in out, out[-3000:]
    assert "superpoint_v1: LicenseRef-MagicLeap-SuperPoint-NonCommercial" in out and "Traceback" not in out
    assert not (store / "superpoint_lightglue").exists()
    proc, executed, _ = doit(seeded.project, "publish", "target=cpu", config, "model=superpoint_open", f"store={store}")
    assert proc.returncode == 0 and executed == ["publish:cpu:superpoint_open"], proc.stderr[-3000:]  # MIT
    acknowledged = tmp_path / "research.yaml"
    acknowledged.write_text("store: {acknowledge_noncommercial: [superpoint_v1, superpoint_lightglue]}\n")
    proc, executed, _ = doit(seeded.project, "publish", "target=cpu", f"{config},{acknowledged}", "model=superpoint_lightglue",
                             f"store={store}")
    assert proc.returncode == 0 and "bundle:cpu:superpoint_lightglue" not in executed, proc.stderr[-3000:]
    assert (store / "superpoint_lightglue" / VERSIONS["superpoint_lightglue"] / "cpu" / "manifest.json").is_file()
