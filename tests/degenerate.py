"""Degenerate inputs through the runtime API: what a bundle must survive (issue 10).

For each case none may crash, output a NaN or an Inf, or report a match that touches a padded or
invalid keypoint (the API raises if a graph matches a padded slot, and every match index must fall
inside the returned keypoints):

- a black image, a uniform grey image, pure noise (each matched with itself);
- the same photograph twice: almost every confident keypoint (score above the median of the
  real ones) must be matched to itself;
- a photograph and its 180 degree rotation.

Models without a matcher are matched by mutual nearest neighbours of their descriptors, as an
extractor is evaluated on its own.
"""

from __future__ import annotations

import numpy as np

from glueforge.api import Bundle
from glueforge.homography import mutual_nearest_descriptors

SELF_MATCHED = 0.9  # share of confident keypoints of an image matched to themselves against the same image
SAME_PX = 0.01  # keypoints this close (pixels) are the same keypoint


def _pair(bundle: Bundle, image0: np.ndarray, image1: np.ndarray, scores: bool = False):
    """Features of both images and their matches: ``match_pair`` (the end2end graph where there is one), or with
    ``scores`` (which end2end does not return) ``extract`` then ``match``; an extractor alone: mutual nearest
    descriptors."""
    if bundle.has_matcher and not scores:
        pair = bundle.match_pair(image0, image1)
        return pair.features0, pair.features1, pair.matches, pair.scores
    f0, f1 = bundle.extract([image0, image1])
    if bundle.has_matcher:
        found = bundle.match(f0, f1)
        return f0, f1, found.matches, found.scores
    matches = mutual_nearest_descriptors(f0.descriptors, f1.descriptors)
    return f0, f1, matches, np.ones(len(matches), np.float32)


def problems(bundle: Bundle, photograph: np.ndarray, trained_matcher: bool = True) -> list[str]:
    """Every violation over the degenerate cases, as readable lines (empty: the bundle survives them).

    ``trained_matcher=False`` (a matcher with seeded random weights) drops the self-matching check of the same
    image twice for models with a matcher: a random LightGlue has no reason to match a keypoint to itself
    (measured: 0.06 of SuperPoint's and 0.68 of SIFT's); every other check stands."""
    shape = photograph.shape
    rng = np.random.default_rng(0)
    cases = {
        "black": (np.zeros(shape, np.uint8),) * 2,
        "grey": (np.full(shape, 128, np.uint8),) * 2,
        "noise": (rng.integers(0, 256, shape, dtype=np.uint8),) * 2,
        "same photograph twice": (photograph, photograph.copy()),
        "photograph and its 180 degree rotation": (photograph, np.ascontiguousarray(photograph[::-1, ::-1])),
    }
    found = []
    for case, (image0, image1) in cases.items():
        try:
            f0, f1, matches, scores = _pair(bundle, image0, image1, scores=case == "same photograph twice")
        except Exception as e:  # noqa: BLE001 - a crash is what this reports
            found.append(f"{case}: {type(e).__name__}: {e}")
            continue
        for i, f in enumerate((f0, f1)):
            for name in ("keypoints", "scores", "descriptors"):
                value = getattr(f, name)
                if value is not None and not np.isfinite(value).all():
                    found.append(f"{case}: image {i} {name} has NaN or Inf")
            for name, value in f.extra.items():
                if not np.isfinite(value).all():
                    found.append(f"{case}: image {i} {name} has NaN or Inf")
            w, h = f.image_size
            if len(f) and not ((f.keypoints >= 0).all() and (f.keypoints[:, 0] < w).all() and (f.keypoints[:, 1] < h).all()):
                found.append(f"{case}: image {i} has keypoints outside the image")
        if not np.isfinite(scores).all():
            found.append(f"{case}: match scores have NaN or Inf")
        if len(matches) and not ((matches >= 0).all() and (matches[:, 0] < len(f0)).all() and (matches[:, 1] < len(f1)).all()):
            found.append(f"{case}: a match indexes no returned keypoint")
        # the two images of one batch may differ in the last float bits (measured: 1e-6 px on one of aliked_t16's
        # 1687 keypoints with onnxruntime), so "the same keypoints" and "matched to itself" are by position
        if case == "same photograph twice" and not (f0.keypoints.shape == f1.keypoints.shape
                                                    and np.allclose(f0.keypoints, f1.keypoints, atol=SAME_PX)):
            found.append(f"{case}: the same image gave different keypoints")
        if case == "same photograph twice" and (trained_matcher or not bundle.has_matcher):
            real = f0.scores[f0.scores > 0] if f0.scores is not None else np.zeros(0)
            confident = np.nonzero(f0.scores >= np.median(real))[0] if len(real) else np.arange(len(f0))
            to_itself = np.linalg.norm(f0.keypoints[matches[:, 0]] - f1.keypoints[matches[:, 1]], axis=-1) <= SAME_PX
            themselves = set(matches[to_itself][:, 0].tolist())
            share = np.mean([i in themselves for i in confident]) if len(confident) else 0.0
            if share < SELF_MATCHED:
                found.append(f"{case}: only {share:.3f} of {len(confident)} confident keypoints matched to themselves "
                             f"(needs {SELF_MATCHED})")
    return found


def half(image: np.ndarray) -> np.ndarray:
    """An image at half its size (Pillow, bilinear)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((image.shape[1] // 2, image.shape[0] // 2), Image.BILINEAR))


def measured_bundle(directory) -> Bundle:
    """A bundle run through what its validation ran (``measured_with``): for TensorRT-RTX bundles on a machine
    without an RTX GPU, the FP16 ONNX each engine was compiled from, with onnxruntime."""
    import json
    from pathlib import Path

    from glueforge import registry
    from glueforge.runtime import PolygraphyGraph

    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    runtime = registry.runtime(manifest["runtime"]["runtime"])
    return Bundle(directory, manifest, runners=lambda g: PolygraphyGraph(runtime.runner(directory, g, g)))
