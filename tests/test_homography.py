"""The homography gate (glueforge/homography.py, validation.validate.homography) and ``glueforge evaluate``.

Every validated bundle carries the AUC@1/3/5px, precision and match count of its engine and of the
unpatched upstream model on the same seeded warps; the gate (engine AUC@3px >= reference's minus
the target's margin) stops a bundle like any validation failure, shown here on an engine whose
weights were deliberately damaged.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import glueforge
from glueforge.homography import auc, corner_error, evaluate, make_warps
from glueforge.pipeline import Pipeline
from tests.project import MODELS, SHARED_DATA, VERSIONS
from glueforge.validation.validate import homography

log = logging.getLogger(__name__)


def test_auc_and_corner_error():
    assert auc([0.0, 0.0]) == pytest.approx([1.0, 1.0, 1.0])
    assert auc([float("inf")] * 3) == [0.0, 0.0, 0.0]
    assert auc([0.5, 2.0, 4.0, float("inf")]) == pytest.approx([0.1875, 0.375, 0.525])
    truth = np.array([[1.0, 0, 5], [0, 1, -3], [0, 0, 1]])
    assert corner_error(truth, truth, 480, 640) == 0.0 and corner_error(truth, None, 480, 640) == float("inf")
    shifted = truth.copy()
    shifted[0, 2] += 2.0
    assert corner_error(truth, shifted, 480, 640) == pytest.approx(2.0)


def test_warps_are_seeded_and_exact_matches_score_one():
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = make_warps([image], 2, seed=3), make_warps([image], 2, seed=3)
    assert all(np.array_equal(x.image1, y.image1) and np.array_equal(x.homography, y.homography) for x, y in zip(a, b))
    assert not np.array_equal(a[0].homography, a[1].homography)
    grid = np.stack(np.meshgrid(np.arange(10, 150, 20.0), np.arange(10, 110, 20.0)), -1).reshape(-1, 2)
    exact = []
    for w in a:
        p = np.concatenate([grid, np.ones((len(grid), 1))], 1) @ w.homography.T
        exact.append((grid, p[:, :2] / p[:, 2:]))
    result = evaluate(exact, a)
    assert result["auc@1px"] > 0.99 and result["precision@3px"] == 1.0 and result["matches"] == len(grid)


@pytest.mark.parametrize("target", ["cpu", "openvino", "rtx"])
def test_every_bundle_passes_the_gate_with_engine_and_reference_figures(openvino_built, rtx_built, target):
    project = rtx_built if target == "rtx" else openvino_built
    rows = []
    for model in MODELS:
        manifest = json.loads((project / "artifacts/store" / model / VERSIONS[model] / target / "manifest.json").read_text())
        h = manifest["validation"]["homography"]
        assert h["passed"] and h["warps"] == 5 and "USAC_MAGSAC" in h["estimator"]
        for who in ("engine", "reference"):
            assert set(h[who]) >= {"auc@1px", "auc@3px", "auc@5px", "precision@3px", "matches"}
        assert h["engine"]["auc@3px"] >= h["reference"]["auc@3px"] - h["margin"]
        assert h["reference"]["auc@3px"] > 0.3 and h["reference"]["matches"] > 30, (model, h["reference"])  # real weights
        rows.append(f"{model:18s} {target:8s} engine AUC@3px {h['engine']['auc@3px']:.3f}  reference {h['reference']['auc@3px']:.3f}"
                    f"  (AUC@1/5px {h['engine']['auc@1px']:.3f}/{h['engine']['auc@5px']:.3f}, precision "
                    f"{h['engine']['precision@3px']:.3f}, matches {h['engine']['matches']:.0f})")
    log.info("homography gate on %s:\n%s", target, "\n".join(rows))


def _damaged(bundle_dir, out):
    """A copy of a cpu bundle whose matcher weights carry 60 % multiplicative noise (the extractor is intact,
    so keypoints and descriptors are as before and only the matches suffer), bundled as built."""
    import shutil

    shutil.copytree(bundle_dir, out)
    rng = np.random.default_rng(0)
    for graph in json.loads((out / "manifest.json").read_text())["graphs"]:
        model = onnx.load(str(out / f"{graph}.onnx"))
        matcher = {i for n in model.graph.node if n.name.startswith("/matcher") for i in n.input}
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if init.name in matcher and w.dtype == np.float32 and w.size > 16:
                init.CopyFrom(numpy_helper.from_array((w * (1 + 0.6 * rng.standard_normal(w.shape))).astype(np.float32), init.name))
        onnx.save(model, str(out / f"{graph}.onnx"))
    # as a bad build would have bundled it: the manifest lists the damaged files' digests (glueforge.open checks them)
    from glueforge.cache import describe_files

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    manifest["files"] = describe_files(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def test_the_gate_fails_on_a_damaged_engine(built, tmp_path):
    model = "aliked_lightglue"
    pipeline = Pipeline.load(built)
    export_dir = pipeline.cached("reference", model, "cpu").path
    target = pipeline.config.target("cpu")
    bundle_dir = built / "artifacts/store" / model / VERSIONS[model] / "cpu"
    with glueforge.open(bundle_dir) as intact:
        assert homography(intact, export_dir, target)["passed"]
    with glueforge.open(_damaged(bundle_dir, tmp_path / "damaged")) as damaged:
        result = homography(damaged, export_dir, target)
    assert not result["passed"]
    assert result["engine"]["auc@3px"] < result["reference"]["auc@3px"] - result["margin"], result


def test_evaluate_on_a_users_own_images(built):
    bundle = built / "artifacts/store/disk_lightglue" / VERSIONS["disk_lightglue"] / "cpu"
    proc = subprocess.run([sys.executable, "-m", "glueforge.cli", "evaluate", str(bundle), "--images",
                           str(SHARED_DATA / "sequences/tum"), "--warps", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "4 warps (1 per image, seed 0) of 4 images of" in lines[0] and "USAC_MAGSAC" in lines[0]
    assert lines[1].split() == ["AUC@1px", "AUC@3px", "AUC@5px", "precision@3px", "matches"]
    mine = lines[2].split()
    assert mine[:4] == ["this", "machine,", "your", "images"] and float(mine[5]) > 0.3 and float(mine[-1]) > 50
    assert lines[3].startswith("at build: engine") and lines[4].startswith("at build: reference")
