"""Degenerate inputs (black, grey, noise, the same image twice, an image and its 180 degree rotation)
through every model on every target whose engines run here: cpu and openvino (TensorRT-RTX engines
run on RTX GPUs only). tests/degenerate.py says what each case must satisfy; the images are 240x320
(half the validation size: the API pads or resizes any size, and CI time is finite). The seeded
SuperPoint and SIFT bundles are checked in test_seeded_models."""

from __future__ import annotations

import numpy as np
import pytest

import glueforge
from tests.degenerate import half, problems
from tests.project import MODELS, VERSIONS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_degenerate_inputs(built_for, model, target):
    directory = built_for / "artifacts/store" / model / VERSIONS[model] / target
    with glueforge.open(directory) as bundle:
        assert problems(bundle, half(np.load(directory / "sample.npz")["image0"])) == []
