"""Validation's comparison of engine outputs with the PyTorch golden outputs."""

from __future__ import annotations

import numpy as np

from glueforge.validation.validate import align_keypoints


def test_swapped_keypoints_are_aligned_for_per_image_and_per_pair_outputs():
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 500, (2, 6, 2)).astype(np.float32)
    golden = {"keypoints": keypoints, "scores": rng.random((2, 6)).astype(np.float32),
              "mscores0": rng.random((1, 6)).astype(np.float32)}
    swap = np.array([1, 0, 2, 3, 5, 4])  # near-equal scores change places under FP16
    produced = {name: value[:, swap] for name, value in golden.items()}
    g, p = align_keypoints(golden, produced)
    assert np.array_equal(g["scores"], p["scores"]) and np.array_equal(g["mscores0"], p["mscores0"])
    assert not np.array_equal(golden["mscores0"], produced["mscores0"])  # compared slot by slot they differ
    produced["mscores0"][0, 0] += 0.5  # a real difference survives alignment
    g, p = align_keypoints(golden, produced)
    assert np.abs(g["mscores0"] - p["mscores0"]).max() == np.float32(0.5)
