"""Degenerate inputs (black, grey, noise, the same image twice, an image and its 180 degree rotation)
through every model and target that runs here: the cpu and openvino engines, and the FP16 ONNX behind
the rtx engines (what runs of them without an RTX GPU). tests/degenerate.py says what each case must
satisfy; the seeded SuperPoint and SIFT bundles are checked in test_seeded_models."""

from __future__ import annotations

import numpy as np
import pytest

import glueforge
from tests.degenerate import measured_bundle, problems
from tests.project import MODELS, VERSIONS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("target", ["cpu", "openvino", "rtx"])
def test_degenerate_inputs(openvino_built, rtx_built, model, target):
    project = rtx_built if target == "rtx" else openvino_built
    directory = project / "artifacts/store" / model / VERSIONS[model] / target
    with (measured_bundle(directory) if target == "rtx" else glueforge.open(directory)) as bundle:
        photograph = np.load(directory / "sample.npz")["image0"]
        assert problems(bundle, photograph) == []
