"""Dynamic H and W: one exported extractor graph runs at every valid size and equals PyTorch there.

Each family's extractor graph, as the cpu build traced it (at models.yaml's ``image_size``, 480x640,
from a synthetic example: ``glueforge.stages.export.trace_images``), runs in onnxruntime at 480x640, at KITTI's 376x1241 frame zero-padded to the family's divisor, and at a
small 256x320; the patched PyTorch module at the same size is the reference. A graph with the
trace's size frozen into it (a ``torch.tensor([w, h])`` constant) fails here: its keypoints or
descriptors come out wrong at the other sizes. ALIKED's variants are checked against kornia at
both sizes in test_aliked_variants; SuperPoint in test_superpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from glueforge.config import Config
from glueforge.fetch import fetch
from glueforge.graphs import Models, graph_io
from glueforge.pipeline import Pipeline
from glueforge.validation.images import load, load_padded
from glueforge.validation.metrics import mutual_nearest

from tests.project import REPO, SHARED_DATA, ort_session

log = logging.getLogger(__name__)


@pytest.mark.parametrize("model", ["aliked_lightglue", "disk_lightglue", "xfeat_lighterglue"])
def test_extractor_graph_runs_at_every_size(model, built, download_cache):

    config = Config.load(REPO / "models.yaml")
    spec = config.model(model)
    settings = config.export_settings(model, "cpu")
    weight = spec.extractor.weights
    models = Models(settings, {"extractor": fetch(weight, config.project.weights[weight], download_cache, REPO),
                               "matcher": fetch(spec.matcher.weights, config.project.weights[spec.matcher.weights],
                                                download_cache, REPO)})
    x = spec.extractor
    ins, outs = graph_io("extractor", settings, models.channels, models.descriptor_dim)
    assert ins[0].shape == ("N", x.channels, "H", "W")
    frame = sorted((SHARED_DATA / "sequences" / "kitti").glob("*.png"))[0]
    photo = SHARED_DATA / "pairs" / "sacre_coeur1.jpg"
    images = {"480x640": load(photo, (480, 640), x.colour), "256x320": load(photo, (256, 320), x.colour),
              "kitti padded": load_padded(frame, x.divisor, x.colour)}
    # the extractor graph exactly as the cpu build traced it (its export step, before simplification)
    exported = Pipeline.load(built).cached("export", model, "cpu", "extractor")
    assert exported is not None, f"the cpu build has no export step of {model}'s extractor"
    session = ort_session(str(exported.file("extractor.onnx")))
    for name, image in images.items():
        assert image.shape[1] % x.divisor == 0 and image.shape[2] % x.divisor == 0
        keypoints, scores, descriptors = session.run(None, {"images": image[None]})
        with torch.no_grad():
            ref = [t.numpy() for t in models.graph("extractor")(torch.from_numpy(image[None]))]
        found = mutual_nearest(ref[0][0], keypoints[0], 0.01)
        paired = found >= 0
        error = float(np.abs(ref[2][0][paired] - descriptors[0][found[paired]]).max())
        log.info("%s %s %s: keypoints paired %.4f, descriptor max |diff| %.2e", model, name, image.shape[1:], paired.mean(), error)
        assert paired.mean() >= 0.99, f"{model} at {name}: only {paired.mean():.3f} of the keypoints agree"
        assert error < 1e-3, f"{model} at {name}: descriptors differ by {error}"
